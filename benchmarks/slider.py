"""Time one latent-explorer update: what a slider drag costs (decode one z, encode the PNG, set the image).

    .venv/bin/python benchmarks/slider.py [--checkpoint PATH] [--updates 500]

The target (issue 6 / issue 2) is at most 50 ms per update on a laptop CPU for the default model.
Without --checkpoint it uses an untrained default VAE: decoding costs the same for any weights.
"""

from __future__ import annotations

import argparse
import time

import torch

from vae_utils import VAE, latent_explorer, load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a vae_utils checkpoint (default: an untrained default VAE)")
    parser.add_argument("--updates", type=int, default=500)
    args = parser.parse_args()

    model = load_checkpoint(args.checkpoint, device="cpu").model if args.checkpoint else VAE().eval()
    x = torch.rand(1, *model.config.image_shape).round()  # any binary image: the sliders start at its code
    explorer = latent_explorer(model, x)
    n_sliders = len(explorer.sliders)
    times = []
    for i in range(args.updates):
        start = time.perf_counter()
        explorer.sliders[i % n_sliders].value = ((i * 0.37) % 6) - 3  # what a drag does: the observer redraws
        times.append(time.perf_counter() - start)
    times.sort()
    print(
        f"slider update, {model.config.architecture} latent {model.config.latent_dim}, "
        f"{torch.get_num_threads()} torch threads: median {times[len(times) // 2] * 1e3:.2f} ms, "
        f"p95 {times[int(len(times) * 0.95)] * 1e3:.2f} ms, max {times[-1] * 1e3:.2f} ms over {len(times)} updates"
    )


if __name__ == "__main__":
    main()
