"""vae_utils: variational autoencoders, derived and checked.

The library behind the tutorial series in notebooks/. The 24 names in ``__all__`` are what a reader
uses; everything else lives in a submodule, reached as an attribute of the package::

    import vae_utils as vu
    train, test = vu.load_dataset("fashion-mnist", "train"), vu.load_dataset("fashion-mnist", "test")
    result = vu.fit(vu.VAE(), train, test, vu.TrainConfig(epochs=10))
    vu.show_images(result.model.sample(64))
    vu.objectives.gaussian_kl(mu, logvar)      # submodules: objectives, toy, estimators, plotting,
    vu.plotting.plot_kl_per_dim(kl_per_dim)    # widgets, data, model, networks, training, evaluation,
                                               # checkpoint, runs, tutorial, device

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

# Every module in the package is an attribute too (objectives, toy, estimators, plotting, widgets, data,
# model, networks, training, evaluation, checkpoint, runs, tutorial, device, ...), imported on first use.


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
    from . import (checkpoint, data, device, estimators, evaluation, model, networks, objectives, plotting,
                   runs, toy, training, tutorial, widgets)
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
