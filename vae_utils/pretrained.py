"""The series' default model, trained once and shipped with the package (weights only, about 2.6 MB).

Notebook 04 trains this model in front of the reader. Notebooks 05 and 06 reuse it; on a fresh Binder or Colab
session where 04 has not run, ``vu.tutorial.default_model`` starts from the shipped file instead of training
again for minutes (this module builds on ``vu.tutorial``, never the other way round). The file is an ordinary
``save_checkpoint`` file (``weights_only`` loading, no optimizer state) with the model and training configs
and the training set's name and size, so ``load_or_train`` accepts it only for exactly the run that produced
it.

    python -m vae_utils.pretrained            # rebuild the file: train the full-setting model, record its test ELBO
    python -m vae_utils.pretrained --check    # load it and compare its test ELBO with the recorded value

``RECORD`` (a JSON file beside the weights) holds the test ELBO that the shipped weights gave when they were
written; tests/test_pretrained.py recomputes it, so a change to the model that silently invalidates the
weights fails the tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .evaluation import evaluate_elbo
from .model import VAE
from .runs import load_or_train
from .tutorial import SHIPPED_WEIGHTS, Settings, settings

__all__ = ["WEIGHTS", "RECORD", "settings_of_shipped_model", "record", "load", "rebuild", "check"]

WEIGHTS = SHIPPED_WEIGHTS  # vu.tutorial.default_model starts from it where the settings match
RECORD = WEIGHTS.with_suffix(".json")


def settings_of_shipped_model(**overrides: Any) -> Settings:
    """The notebooks' full setting: 784-400-20 MLP, 10 epochs on all 60,000 Fashion-MNIST images."""
    return settings(quick=False, dataset="fashion-mnist", latent_dim=20, epochs=10, train_images=None, **overrides)


def record() -> dict[str, Any]:
    """What was measured when the weights were written: test ELBO (nats), number of test images, versions."""
    return json.loads(RECORD.read_text())


def load(device: torch.device | str | None = None) -> VAE:
    """The shipped model, in eval mode, on ``device`` (None: cuda, mps, then cpu)."""
    return load_checkpoint(WEIGHTS, device=device).model.eval()


def rebuild(progress: bool = True) -> dict[str, Any]:
    """Train the full-setting model from scratch (in a temporary folder), write it to ``WEIGHTS`` without
    optimizer state, and write its test ELBO to ``RECORD``. Returns the record."""
    with tempfile.TemporaryDirectory() as runs:
        s = settings_of_shipped_model(runs=Path(runs))
        train, test = s.load_data()
        # load_or_train, not default_model: that would copy the old shipped weights in and return them.
        result = load_or_train(s.checkpoint, s.model_config(), s.train_config(), train, test, progress=progress)
        if result.interrupted:
            raise KeyboardInterrupt("training was interrupted; the shipped weights are unchanged")
        model = result.model.eval()
        save_checkpoint(WEIGHTS, model, None, result.history, s.train_config(), train_data=train)
    measured = evaluate_elbo(load(device=s.device), test)
    values = {
        "test_elbo": measured["elbo"],
        "test_images": measured["n"],
        "command": "python -m vae_utils.pretrained",
        "torch": torch.__version__,
    }
    RECORD.write_text(json.dumps(values, indent=2) + "\n")
    return values


def check() -> tuple[float, float]:
    """(recorded, recomputed) test ELBO of the shipped weights on the fixed-binarized test set."""
    s = settings_of_shipped_model()
    _, test = s.load_data()
    return record()["test_elbo"], evaluate_elbo(load(device=s.device), test)["elbo"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vae_utils.pretrained", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare the shipped weights' test ELBO with the record")
    args = parser.parse_args(argv)
    if args.check:
        recorded, now = check()
        print(f"test ELBO: recorded {recorded:.4f} nats, now {now:.4f} nats (difference {now - recorded:+.2e})")
        return 0 if abs(now - recorded) < 1e-2 else 1
    values = rebuild()
    size = WEIGHTS.stat().st_size / 2**20
    print(f"wrote {WEIGHTS} ({size:.1f} MiB) and {RECORD}: test ELBO {values['test_elbo']:.2f} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
