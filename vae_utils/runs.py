"""Training runs that are trained once and reused: ``load_or_train``.

A run is a checkpoint at a path together with what produced it: the model's class and config, the
training config (the device, cuda_graph and compile aside) and the training data (its name and number of
images, recorded by ``save_checkpoint(..., train_data=...)``). ``load_or_train`` loads the checkpoint
when all of them match and trains (and saves) otherwise, for a VAE, a FlowVAE or a ConditionalVAE alike.
The notebooks and ``python -m vae_utils train`` both go through it, so a model trained by one is reused
by the other.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .checkpoint import Checkpoint, CheckpointError, data_key, load_checkpoint, save_checkpoint
from .device import pick_device
from .model import VAEConfig
from .models import build_model
from .train_config import TrainConfig
from .training import FitResult, History, default_optimizer, fit

__all__ = ["load_or_train", "find_run", "same_run"]


def same_run(checkpoint: Checkpoint, model_config: VAEConfig, train_config: TrainConfig, train_data) -> bool:
    """Whether ``checkpoint`` was trained with these configs (the device, cuda_graph and compile aside)
    on this training set."""
    return (
        type(checkpoint.model.config) is type(model_config)
        and checkpoint.model.config.to_dict() == model_config.to_dict()
        and checkpoint.train_config is not None
        and _without_device(checkpoint.train_config) == _without_device(train_config)
        and checkpoint.metadata.get("train_data") == data_key(train_data)
    )


def _without_device(train_config: TrainConfig) -> dict[str, Any]:
    """The config without where and how fast it ran (device, cuda_graph, compile): those change the random
    noise's source, not what was trained."""
    values = train_config.to_dict()
    for key in ("device", "cuda_graph", "compile"):
        values.pop(key, None)
    return values


def find_run(path: str | os.PathLike, model_config: VAEConfig, train_config: TrainConfig, train_data,
             device: torch.device | str | None = None) -> FitResult | None:
    """The run stored at ``path`` as a FitResult if it matches (see ``same_run``), else None.
    An unreadable file gives a warning and None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        checkpoint = load_checkpoint(path, device=device)
    except CheckpointError as err:
        warnings.warn(f"{err} Training again; the new run will replace it.", stacklevel=3)
        return None
    if not same_run(checkpoint, model_config, train_config, train_data):
        return None
    model = checkpoint.model
    optimizer = default_optimizer(model, train_config.lr)
    if checkpoint.optimizer_state is not None:
        optimizer.load_state_dict(checkpoint.optimizer_state)
    return FitResult(model, checkpoint.history or History(), optimizer, False)


def load_or_train(path: str | os.PathLike, model_config: VAEConfig, train_config: TrainConfig, train_data,
                  test_data=None, progress: bool = True, callback=None, *, metadata: dict | None = None,
                  overwrite: bool = True) -> FitResult:
    """Load the model at ``path`` if it was trained with the same ``model_config`` (a ``VAEConfig``,
    ``FlowVAEConfig`` or ``ConditionalVAEConfig``) and ``train_config`` (the device, cuda_graph and compile
    aside) on the same training data (its name and size); otherwise train the model the config is for with
    ``fit`` and save it there. Either way returns a ``FitResult`` with the model, its training history and
    an Adam optimizer holding the stored state.

    ``callback`` is passed to ``fit`` (e.g. a ``LiveLossPlot``); it is not called when loading.
    A checkpoint with other configs or data is replaced by the new training run, unless
    ``overwrite=False``: then a ``FileExistsError`` is raised before training. An interrupted run
    (``interrupted=True``) is returned but not saved, so the next call trains again.
    ``metadata``: extra plain values stored with a new checkpoint (e.g. the data set's name).
    """
    if not isinstance(model_config, VAEConfig) or not isinstance(train_config, TrainConfig):
        raise TypeError("load_or_train needs a model config (VAEConfig, FlowVAEConfig or ConditionalVAEConfig) and a "
                        f"TrainConfig, got {type(model_config).__name__} and {type(train_config).__name__}.")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"load_or_train: {path} is a folder; give the checkpoint file's path, e.g. {path / 'checkpoint.pt'}.")
    found = find_run(path, model_config, train_config, train_data, device=pick_device(train_config.device))
    if found is not None:
        return found
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} holds another run (other configs or training data); refusing to replace it. "
            "Choose another path, delete the file, or pass overwrite=True."
        )
    if model_config.seed is None:
        torch.manual_seed(train_config.seed)  # the initial weights then come from the global RNG
    result = fit(build_model(model_config), train_data, test_data, train_config, callback=callback, progress=progress)
    if not result.interrupted:
        save_checkpoint(path, result.model, result.optimizer, result.history, train_config, metadata,
                        train_data=train_data)
    return result
