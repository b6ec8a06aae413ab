"""pytest runs every notebook here under nbval (see pyproject.toml).

Quick mode: the notebooks read VAE_TUTORIAL_QUICK and use fewer epochs, images and samples, with the same
code. The kernels nbval starts inherit this process's environment (--nbval-current-env), so setting it here
is enough. Export VAE_TUTORIAL_QUICK=0 to run the full setting under the tests.
"""

import os

os.environ.setdefault("VAE_TUTORIAL_QUICK", "1")
