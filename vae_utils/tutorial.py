"""What the notebooks share: the settings block and the exercise checker.

    import vae_utils as vu
    settings = vu.tutorial.settings()        # reads VAE_TUTORIAL_QUICK (CI sets it: same code, less work)
    train, test = settings.load_data()
    result = vu.tutorial.default_model(settings, train, test)   # the 784-400-20 model notebook 04 trains
    vu.tutorial.check(my_kl, reference_kl, name="KL")   # a pass line, or how far off (never the reference)
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint
from .data import ImageDataset, load_dataset
from .device import pick_device
from .model import VAEConfig
from .runs import load_or_train, same_run
from .train_config import TrainConfig
from .training import FitResult

__all__ = ["Settings", "settings", "is_quick", "default_model", "check", "Verdict", "SHIPPED_WEIGHTS"]

QUICK_ENV = "VAE_TUTORIAL_QUICK"
# The series' default model, trained in the full setting and shipped with the package (vae_utils.pretrained).
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "fashion-mnist_mlp20.pt"


def is_quick() -> bool:
    """True when ``VAE_TUTORIAL_QUICK=1`` (CI and nbval): the same code, fewer epochs, images, samples."""
    return os.environ.get(QUICK_ENV) == "1"


@dataclass
class Settings:
    """The notebooks' settings. Fields left unset take the quick or full default.

    dataset: "fashion-mnist" (or "mnist"). latent_dim: d, the size of z (20: the 784-400-20 MLP of
    Kingma & Welling). epochs: 1 quick / 10 full. train_images: 10,000 quick / None = all 60,000.
    runs: the folder for checkpoints (notebooks/runs/, ignored by git). checkpoint:
    runs/{dataset}_mlp{latent_dim}[_quick].pt. device: cuda, then mps, then cpu. seed: of training.
    """

    quick: bool | None = None
    dataset: str = "fashion-mnist"
    latent_dim: int = 20
    epochs: int | None = None
    train_images: int | None | str = "auto"  # "auto": the setting's default; None: all images
    runs: Path = Path("runs")
    checkpoint: Path | None = None
    device: torch.device | str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.quick = is_quick() if self.quick is None else bool(self.quick)
        self.epochs = (1 if self.quick else 10) if self.epochs is None else self.epochs
        if self.train_images == "auto":
            self.train_images = 10_000 if self.quick else None
        self.runs = Path(self.runs)
        if self.checkpoint is None:
            self.checkpoint = self.runs / f"{self.dataset}_mlp{self.latent_dim}{'_quick' if self.quick else ''}.pt"
        self.checkpoint = Path(self.checkpoint)
        self.device = pick_device(self.device)

    def load_data(self) -> tuple[ImageDataset, ImageDataset]:
        """(train, test) ImageDatasets on ``device``; train cut to the first ``train_images``."""
        train = load_dataset(self.dataset, "train", device=self.device)
        test = load_dataset(self.dataset, "test", device=self.device)
        if self.train_images is not None:
            train = train.subset(min(self.train_images, len(train)))
        return train, test

    def model_config(self, **overrides: Any) -> VAEConfig:
        """The series' VAE: 784-400-d MLP encoder and decoder, Bernoulli likelihood, weights seed 0."""
        values = dict(latent_dim=self.latent_dim, architecture="mlp", hidden_dims=(400,), likelihood="bernoulli")
        return VAEConfig(**{**values, **overrides})

    def train_config(self, **overrides: Any) -> TrainConfig:
        """``epochs`` epochs of Adam (lr 1e-3, batch 128) on ``device``, seeded with ``seed``."""
        values = dict(epochs=self.epochs, batch_size=128, lr=1e-3, seed=self.seed, device=str(self.device))
        return TrainConfig(**{**values, **overrides})


def settings(**overrides: Any) -> Settings:
    """The settings for this run (quick or full, from ``VAE_TUTORIAL_QUICK``); any field can be
    overridden, e.g. ``settings(latent_dim=2, epochs=3)`` (the checkpoint name follows)."""
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"settings() got unknown field(s) {unknown}; known: {sorted(known)}.")
    return Settings(**overrides)


def default_model(settings: Settings, train: ImageDataset, test: ImageDataset | None = None,
                  progress: bool = True, callback=None) -> FitResult:
    """The series' model: loaded from ``settings.checkpoint`` if it was trained with these settings on this
    training set, trained there otherwise (``vu.load_or_train``). Where no checkpoint exists yet and the
    settings are exactly those of the model shipped with the package (``SHIPPED_WEIGHTS``, the full setting;
    see ``vu.pretrained``), the shipped file is copied there first, so a fresh Binder or Colab session does
    not train for minutes before notebook 05 or 06 can start. An existing checkpoint is never replaced."""
    _start_from_shipped_weights(settings, train)
    return load_or_train(settings.checkpoint, settings.model_config(), settings.train_config(), train, test,
                         progress=progress, callback=callback)


def _start_from_shipped_weights(settings: Settings, train: ImageDataset) -> None:
    if settings.checkpoint.exists() or not SHIPPED_WEIGHTS.is_file():
        return
    if same_run(load_checkpoint(SHIPPED_WEIGHTS, device="cpu"), settings.model_config(), settings.train_config(),
                train):
        settings.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHIPPED_WEIGHTS, settings.checkpoint)


class Verdict:
    """What ``check`` returns: true on a pass. A notebook shows nothing for it (the printed line says it
    all), so a cell that ends with ``vu.tutorial.check(...)`` does not add an ``Out: True``."""

    def __init__(self, passed: bool):
        self.passed = bool(passed)

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"Verdict(passed={self.passed})"

    def _ipython_display_(self) -> None:
        pass


def check(answer: Any, reference: Any, rtol: float = 0.05, atol: float | None = None, name: str = "answer",
          monte_carlo_samples: int | None = None) -> Verdict:
    """Compare an exercise answer with a reference computed by the library; print one line.

    Passes when every element has |answer - reference| <= atol + rtol * |reference| (atol None: 0),
    with matching shapes. The line states the tolerance as it is used: relative (``rtol``), absolute
    (``atol``) or both. A failure says how far off the answer is (relative to the reference's size, or in
    absolute terms when only ``atol`` is set) and never prints the reference. ``answer=None`` means "not
    attempted yet". monte_carlo_samples: the answer is a Monte Carlo estimate that needs about this many
    samples to land within the tolerance; a failure then names Monte Carlo noise and that count.
    Returns a ``Verdict``, true on a pass.
    """
    if answer is None:
        print(f"{name}: not attempted yet -- replace None with your code and run the cell again.")
        return Verdict(False)
    got, want = _as_float64(answer), _as_float64(reference)
    if got is None:
        print(f"{name}: not checked -- the answer is a {type(answer).__name__}, not a number or tensor.")
        return Verdict(False)
    if got.shape != want.shape:
        print(f"{name}: not yet -- the answer has shape {tuple(got.shape)}, expected {tuple(want.shape)}.")
        return Verdict(False)
    if not torch.isfinite(got).all():
        print(f"{name}: not yet -- the answer holds NaN or inf.")
        return Verdict(False)
    error, allowed = (got - want).abs(), (atol or 0.0) + rtol * want.abs()
    wrong = int((error > allowed).sum())
    tolerance = _tolerance(rtol, atol)
    if wrong == 0:
        print(f"{name}: correct (within {tolerance} of the reference).")
        return Verdict(True)
    count = f" in {wrong} of {got.numel()} entries" if got.numel() > 1 else ""
    hint = "Check signs, sums and means."
    if monte_carlo_samples is not None:
        hint = (f"If your method is right, Monte Carlo noise can still put it outside the tolerance: use at least "
                f"{monte_carlo_samples:,} samples. Otherwise check signs, sums and means.")
    print(f"{name}: not yet -- {_how_far(error, want, rtol)}{count} (tolerance {tolerance}). {hint}")
    return Verdict(False)


def _tolerance(rtol: float, atol: float | None) -> str:
    """The tolerance as check applies it: "2%", "0.001 absolute" or "0.1% + 1e-05 absolute"."""
    parts = [f"{rtol * 100:.2g}%"] if rtol else []
    if atol:
        parts.append(f"{atol:g} absolute")
    return " + ".join(parts) or "0 (exact)"


def _how_far(error: torch.Tensor, want: torch.Tensor, rtol: float) -> str:
    """How far off, in the tolerance's own terms: relative to the reference when rtol is set, else absolute."""
    if not rtol:
        return f"off by up to {float(error.max()):.3g}"
    relative = float((error / want.abs().clamp_min(1e-12)).max())
    return f"off by up to {relative:.0%} of the reference's size" if relative < 1e4 else "far off"


def _as_float64(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64)
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return None

