"""Checkpoints: a VAE with its config, optimizer state, training history and training config.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)`` (no code runs while loading)::

    {"format": "vae_utils.checkpoint", "version": 1,
     "model_config": VAEConfig.to_dict(), "model_state": state_dict,
     "optimizer_state": optimizer.state_dict() or None,
     "history": History.to_dict() or None, "train_config": TrainConfig.to_dict() or None,
     "metadata": {...}}   # free-form plain values, e.g. the data set's name

It is written atomically (a temporary file in the same folder, fsync, then ``os.replace``), so a crash
or a full disk never leaves a half-written checkpoint where a good one was.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .device import pick_device
from .model import VAE, VAEConfig
from .training import History, TrainConfig

__all__ = ["Checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint", "data_key"]

FORMAT = "vae_utils.checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, not a vae_utils checkpoint, or does not fit its config."""


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``model`` is a ``VAE`` on the requested device, in eval mode;
    ``optimizer_state`` is a state dict for ``torch.optim.Adam(model.parameters())`` (or None)."""

    model: VAE
    history: History | None
    train_config: TrainConfig | None
    optimizer_state: dict | None
    metadata: dict = field(default_factory=dict)


def _plain(value: Any) -> Any:
    """Tuples -> lists and torch.device -> str, recursively, so the payload is weights_only-safe."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, torch.device):
        return str(value)
    return value


def data_key(train_data) -> dict:
    """What identifies a training set (stored as ``metadata["train_data"]``, compared by
    ``vae_utils.runs.load_or_train``): its name and number of images."""
    return {"name": train_data.name, "n": len(train_data)}


def save_checkpoint(
    path: str | os.PathLike,
    model: VAE,
    optimizer: torch.optim.Optimizer | None = None,
    history: History | None = None,
    train_config: TrainConfig | None = None,
    metadata: dict | None = None,
    train_data=None,
) -> Path:
    """Write ``model`` (and optionally its optimizer, history, training config and free-form
    ``metadata`` of plain values) to ``path`` atomically. Parent folders are created. Tensors are
    stored on the CPU, so the file loads on any machine. Returns the path.

    ``train_data`` (an ``ImageDataset``): records its name and size in ``metadata["train_data"]``,
    which ``load_or_train`` compares before it reuses the checkpoint."""
    if not isinstance(getattr(model, "config", None), VAEConfig):
        raise TypeError(
            f"save_checkpoint needs a vae_utils VAE (with a VAEConfig in .config), got {type(model).__name__}."
        )
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": _plain(model.config.to_dict()),
        "model_state": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "optimizer_state": _optimizer_state_cpu(optimizer.state_dict()) if optimizer is not None else None,
        "history": _plain(history.to_dict()) if history is not None else None,
        "train_config": _plain(train_config.to_dict()) if train_config is not None else None,
        "metadata": _plain({**(metadata or {}), **({"train_data": data_key(train_data)} if train_data is not None else {})}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _optimizer_state_cpu(state: dict) -> dict:
    def to_cpu(value):
        if isinstance(value, torch.Tensor):
            return value.detach().cpu()
        if isinstance(value, dict):
            return {key: to_cpu(item) for key, item in value.items()}
        if isinstance(value, list):
            return [to_cpu(item) for item in value]
        if isinstance(value, tuple):  # e.g. Adam's betas: kept a tuple (weights_only loads tuples)
            return tuple(to_cpu(item) for item in value)
        return value

    return to_cpu(state)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); harmless to skip where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device | None = None) -> Checkpoint:
    """Load a checkpoint written by ``save_checkpoint`` with ``torch.load(weights_only=True)``.

    device: where the model goes (None: cuda, then mps, then cpu). Returns a :class:`Checkpoint`.

    Raises :class:`CheckpointError` when the file is missing, truncated or corrupt, is not a
    vae_utils checkpoint, or holds weights that do not fit its model config (naming the keys).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"No checkpoint at {path}. Create one with save_checkpoint(path, model, ...), "
            "load_or_train(path, ...), or `python -m vae_utils train --out DIR` (which writes DIR/checkpoint.pt)."
        )
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file (did you mean {path / 'checkpoint.pt'}?).")
    payload = _read_payload(path)
    problem = _format_problem(payload)
    if problem:
        raise CheckpointError(f"{path} is not a vae_utils checkpoint: {problem}.")
    if payload["version"] > VERSION:
        raise CheckpointError(
            f"{path} is a version {payload['version']} checkpoint; this vae_utils reads version {VERSION} "
            "and older. Upgrade vae_utils."
        )
    try:
        config = VAEConfig.from_dict(payload["model_config"])
        model = VAE(config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} has an invalid model_config {payload['model_config']}: {err}") from None
    _check_state_matches(path, model, payload["model_state"])
    model.load_state_dict(payload["model_state"])
    model.to(pick_device(device)).eval()
    try:
        history = History.from_dict(payload["history"]) if payload["history"] is not None else None
        train_config = TrainConfig.from_dict(payload["train_config"]) if payload["train_config"] is not None else None
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} has an invalid history or train_config: {err}") from None
    return Checkpoint(model, history, train_config, payload["optimizer_state"], dict(payload.get("metadata") or {}))


def _read_payload(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- torch.load fails in many ways on garbage (even IndexError)
        refused = isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower()
        if refused and zipfile.is_zipfile(path):  # a whole torch file, with objects we will not unpickle
            reason = (
                "it holds Python objects other than tensors and plain values, so it was not written by "
                "save_checkpoint (torch.load(weights_only=True) refused it; load only files you trust)"
            )
        else:
            lines = str(err).strip().splitlines()
            detail = f"{type(err).__name__}: {lines[0]}" if lines and not refused else type(err).__name__
            reason = f"the file is truncated, corrupt or not a torch file ({detail}). Delete it and save or train again"
        raise CheckpointError(f"Cannot read {path} as a checkpoint: {reason}.") from None


def _format_problem(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return f"it holds a {type(payload).__name__}, not the checkpoint dict save_checkpoint writes"
    if payload.get("format") != FORMAT:
        keys = sorted(str(key) for key in payload)[:8]
        return f"its 'format' is {payload.get('format')!r}, not {FORMAT!r} (keys: {keys})"
    required = ("version", "model_config", "model_state", "optimizer_state", "history", "train_config")
    missing = [key for key in required if key not in payload]
    if missing:
        return f"it lacks {missing}"
    if not isinstance(payload["version"], int):
        return f"its version is {payload['version']!r}, not an int"
    if not isinstance(payload["model_config"], dict) or not isinstance(payload["model_state"], dict):
        return "its model_config or model_state is not a dict"
    return None


def _check_state_matches(path: Path, model: VAE, state: dict) -> None:
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    stored = {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{key}: stored {list(stored[key])}, config needs {list(expected[key])}"
        for key in expected
        if key in stored and stored[key] != expected[key]
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatches: " + "; ".join(wrong))
        if missing:
            parts.append(f"missing keys: {missing}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected}")
        raise CheckpointError(
            f"The weights in {path} do not fit its model_config {model.config}: "
            + " | ".join(parts)
            + ". The file was edited or written by mismatched code; delete it and train again."
        )
