"""vae_utils: variational autoencoders, derived and checked.

The library behind the tutorial series in notebooks/. The 24 names in ``__all__`` are what a reader
uses; everything else lives in a submodule, reached as an attribute of the package::

    import vae_utils as vu
    train, test = vu.load_dataset("fashion-mnist", "train"), vu.load_dataset("fashion-mnist", "test")
    result = vu.fit(vu.VAE(), train, test, vu.TrainConfig(epochs=10))
    vu.show_images(result.model.sample(64))
    vu.objectives.gaussian_kl(mu, logvar)      # a submodule's name
    vu.plotting.plot_kl_per_dim(kl_per_dim)

The modules, by layer (each imports only from its own layer and those above it in this list):

- core: validation (input checks), objectives (the ELBO, the IW bound), networks, model (VAEConfig, VAE and
  the model protocol), device, idx (idx files), data (ImageDataset, load_dataset), train_config, training
  (train_step, train_epoch, fit), cuda_graphs, evaluation, files (atomic writes), checkpoint, runs
  (load_or_train), models (the model classes by name)
- teaching: toy (models with exact answers), estimators (score-function and reparameterized gradients)
- extensions: flows (FlowVAE), conditional (ConditionalVAE), refinement (per-image inference)
- notebook support: tutorial (settings, check), exercises (notebook 04's checkers), pretrained (the
  shipped model), plotting, widgets

Names and submodules are imported on first use (PEP 562), so ``import vae_utils`` and
``python -m vae_utils --help`` do not import torch.
"""

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

# public name -> the submodule that defines it
_HOMES = {
    "VAE": "model", "VAEConfig": "model",
    "load_dataset": "data", "ImageDataset": "data", "DatasetNotFoundError": "data",
    "vae_elbo": "objectives", "negative_elbo_loss": "objectives",
    "TrainConfig": "train_config", "fit": "training", "train_epoch": "training", "FitResult": "training",
    "TrainingDivergedError": "training",
    "evaluate_elbo": "evaluation", "estimate_log_likelihood": "evaluation",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "CheckpointError": "checkpoint",
    "load_or_train": "runs",
    "pick_device": "device", "seed_everything": "device",
    "show_images": "plotting", "plot_history": "plotting",
    "latent_explorer": "widgets", "interpolation_explorer": "widgets",
}

__all__ = list(_HOMES)

# Every module in the package is an attribute too (see the docstring), imported on first use.


def __getattr__(name: str) -> object:
    if name in _HOMES:
        value = getattr(_importlib.import_module(f".{_HOMES[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if not name.startswith("_"):
        try:
            return _importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise  # the submodule exists but something it imports does not
    raise AttributeError(f"module 'vae_utils' has no attribute {name!r}")


def __dir__() -> list[str]:
    import pkgutil

    submodules = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted({*__all__, *submodules, "__version__"})


if _typing.TYPE_CHECKING:  # for editors and type checkers: the same names, imported eagerly
    from . import (checkpoint, conditional, cuda_graphs, data, device, estimators, evaluation, exercises, files,
                   flows, idx, model, models, networks, objectives, plotting, pretrained, refinement, runs, toy,
                   train_config, training, tutorial, validation, widgets)
    from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from .data import DatasetNotFoundError, ImageDataset, load_dataset
    from .device import pick_device, seed_everything
    from .evaluation import estimate_log_likelihood, evaluate_elbo
    from .model import VAE, VAEConfig
    from .objectives import negative_elbo_loss, vae_elbo
    from .plotting import plot_history, show_images
    from .runs import load_or_train
    from .train_config import TrainConfig
    from .training import FitResult, TrainingDivergedError, fit, train_epoch
    from .widgets import interpolation_explorer, latent_explorer
