"""Checkpoints: a model (a VAE, FlowVAE or ConditionalVAE) with its config, optimizer state, training
history and training config.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)`` (no code runs while loading)::

    {"format": "vae_utils.checkpoint", "version": 1,
     "model_class": "VAE" | "FlowVAE" | "ConditionalVAE", "model_config": config.to_dict(),
     "model_state": state_dict, "optimizer_state": optimizer.state_dict() or None,
     "history": History.to_dict() or None, "train_config": TrainConfig.to_dict() or None,
     "metadata": {...}}   # free-form plain values, e.g. the data set's name

``load_checkpoint`` rebuilds the class the file names (``vae_utils.models.MODEL_CLASSES``). Nothing is lost
while saving: values ``load_checkpoint`` could not read back are converted before writing (``pathlib.Path``
-> str, numpy scalars -> Python numbers, ``torch.device`` -> str) or refused up front, naming the key; and
the file is written atomically (``vae_utils.files``), loaded back with the same checks as
``load_checkpoint`` before it replaces the previous one.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .device import pick_device
from .files import write_atomically, writable_target
from .model import VAE
from .models import MODEL_CLASSES, model_class
from .train_config import TrainConfig
from .training import History

__all__ = ["Checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint", "data_key"]

FORMAT = "vae_utils.checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, not a vae_utils checkpoint, or does not fit its config."""


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``model`` is the saved class (a VAE, FlowVAE or ConditionalVAE) on the requested
    device, in eval mode;
    ``optimizer_state`` is a state dict for ``torch.optim.Adam(model.parameters())`` (or None)."""

    model: VAE
    history: History | None
    train_config: TrainConfig | None
    optimizer_state: dict | None
    metadata: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------ plain values
_PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes)
_HINT = (
    "save_checkpoint stores only values torch.load(weights_only=True) reads back: None, bool, int, "
    "float, str, bytes, tensors, and lists, tuples and dicts of them"
)


def _plain(value: Any, where: str = "value") -> Any:
    """``value`` with every part weights_only-safe, recursively: paths -> str, numpy scalars and
    subclasses of int/float/str (e.g. enums) -> the plain type, torch.device -> str, tensors -> CPU.
    Anything else raises TypeError naming ``where`` (e.g. ``metadata['run']['when']``)."""
    if type(value) in _PLAIN_TYPES or isinstance(value, (torch.dtype, torch.Size)):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {_plain_key(key, where): _plain(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_plain(item, f"{where}[{i}]") for i, item in enumerate(value))
    if isinstance(value, (os.PathLike, torch.device)):
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return _plain(value.item(), where)  # numpy scalar -> Python number
    for kind in (bool, int, float, str):  # IntEnum, str enums, numpy float64 (a float subclass), ...
        if isinstance(value, kind):
            return kind(value) if kind is not str else str.__str__(value)
    fix = "convert it to a list with .tolist()" if hasattr(value, "tolist") else "convert it, e.g. with str(...)"
    if isinstance(value, (set, frozenset)):
        fix = "store sorted(...) (a list) instead"
    raise TypeError(f"{where} is a {type(value).__name__} ({value!r:.60}); {_HINT}: {fix}.")


def _plain_key(key: Any, where: str) -> Any:
    if isinstance(key, os.PathLike):
        return os.fspath(key)
    if type(key) in (str, int, float, bool, type(None)):
        return key
    if type(key).__module__ == "numpy" and hasattr(key, "item"):
        return key.item()
    raise TypeError(f"{where} has the key {key!r} ({type(key).__name__}); use str keys. {_HINT}.")


def data_key(train_data) -> dict:
    """What identifies a training set (stored as ``metadata["train_data"]``, compared by
    ``vae_utils.runs.load_or_train``): its name and number of images."""
    return {"name": train_data.name, "n": len(train_data)}


# ------------------------------------------------------------------------------------ saving
def save_checkpoint(path: str | os.PathLike, model: VAE, optimizer: torch.optim.Optimizer | None = None,
                    history: History | None = None, train_config: TrainConfig | None = None,
                    metadata: dict | None = None, train_data=None) -> Path:
    """Write ``model`` (and optionally its optimizer, history, training config and free-form
    ``metadata`` of plain values) to ``path`` atomically. Parent folders are created. Tensors are
    stored on the CPU, so the file loads on any machine. Returns the path.

    ``train_data`` (an ``ImageDataset``): records its name and size in ``metadata["train_data"]``,
    which ``load_or_train`` compares before it reuses the checkpoint.

    Everything is checked before a byte is written: TypeError for a value the file could not hold
    (naming it) and for arguments of the wrong kind, ValueError for an optimizer of another model,
    IsADirectoryError / NotADirectoryError / PermissionError for a path that cannot be written, each
    with the fix. The written file is loaded back before it replaces ``path``. A full disk raises
    ``OSError(ENOSPC)`` saying how much space was needed; the previous file is then unchanged.
    """
    if not isinstance(model, VAE) or type(model).__name__ not in MODEL_CLASSES:
        raise TypeError(f"save_checkpoint needs a vae_utils model ({', '.join(MODEL_CLASSES)}), got "
                        f"{type(model).__name__}.")
    _check_optimizer_matches(model, optimizer)
    for name, value, kind, what in (
        ("history", history, History, "a History (FitResult.history)"),
        ("train_config", train_config, TrainConfig, "a TrainConfig"),
        ("metadata", metadata, dict, "a dict of plain values"),
    ):
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"save_checkpoint: {name} must be {what} or None, got {type(value).__name__}.")
    path = writable_target(path)
    extra = {"train_data": data_key(train_data)} if train_data is not None else {}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_class": type(model).__name__,
        "model_config": _plain(model.config.to_dict(), "model.config"),
        "model_state": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "optimizer_state": _plain(optimizer.state_dict(), "optimizer.state_dict()") if optimizer is not None else None,
        "history": _plain(history.to_dict(), "history") if history is not None else None,
        "train_config": _plain(train_config.to_dict(), "train_config") if train_config is not None else None,
        "metadata": _plain({**(metadata or {}), **extra}, "metadata"),
    }
    write_atomically(path, lambda file: torch.save(payload, file), lambda tmp: _verify_written(tmp, path, model),
                     _payload_bytes(payload))
    return path


def _payload_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (dict, list, tuple)):
        return sum(_payload_bytes(item) for item in (value.values() if isinstance(value, dict) else value))
    return 0


def _verify_written(tmp: Path, path: Path, model: VAE) -> None:
    """Load the written file back exactly as load_checkpoint would; never let a bad one replace ``path``."""
    try:
        _check_payload(path, torch.load(tmp, map_location="cpu", weights_only=True), model)
    except Exception as err:  # noqa: BLE001 -- whatever went wrong, the old file stays
        lines = str(err).strip().splitlines()
        raise CheckpointError(
            f"save_checkpoint wrote {path}, but the file does not load back ({type(err).__name__}: "
            f"{lines[0] if lines else ''}); the previous file, if any, was kept. This is a bug in "
            "vae_utils or a failing disk: please report it."
        ) from None


def _check_optimizer_matches(model: VAE, optimizer) -> None:
    if optimizer is None:
        return
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"save_checkpoint: optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}."
        )
    own = {id(p) for p in model.parameters()}
    held = [p for group in optimizer.param_groups for p in group["params"]]
    if {id(p) for p in held} != own or len(held) != len(own):
        ours = sum(id(p) in own for p in held)
        raise ValueError(
            f"save_checkpoint: the optimizer is not this model's: it holds {len(held)} parameter tensors, "
            f"{ours} of them this model's (which has {len(own)}). Pass the optimizer that trains this model "
            "(e.g. FitResult.optimizer), or none."
        )


# ------------------------------------------------------------------------------------ loading
def load_checkpoint(path: str | os.PathLike, device: str | torch.device | None = None) -> Checkpoint:
    """Load a checkpoint written by ``save_checkpoint`` with ``torch.load(weights_only=True)``.

    device: where the model goes (None: cuda, then mps, then cpu). Returns a :class:`Checkpoint`.

    Raises :class:`CheckpointError` when the file is missing, unreadable, truncated or corrupt, is
    not a vae_utils checkpoint, holds weights that do not fit its model config (naming the keys), or
    an optimizer state that does not fit the model's parameters.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_checkpoint: path must be a str or pathlib.Path, got {type(path).__name__}.")
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"No checkpoint at {path}. Create one with save_checkpoint(path, model, ...), "
            "load_or_train(path, ...), or `python -m vae_utils train --out DIR` (which writes DIR/checkpoint.pt)."
        )
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file (did you mean {path / 'checkpoint.pt'}?).")
    device = pick_device(device)
    payload = _read_payload(path)
    model, history, train_config = _check_payload(path, payload)
    model.load_state_dict(payload["model_state"])
    model.to(device).eval()
    return Checkpoint(model, history, train_config, payload["optimizer_state"], dict(payload.get("metadata") or {}))


def _check_payload(path: Path, payload: Any, model: VAE | None = None):
    """Every check load_checkpoint makes on a payload; returns (model, history, train_config).
    ``model``: compare the weights with this model instead of building one from the config."""
    problem = _format_problem(payload)
    if problem:
        raise CheckpointError(f"{path} is not a vae_utils checkpoint: {problem}.")
    if payload["version"] > VERSION:
        raise CheckpointError(
            f"{path} is a version {payload['version']} checkpoint; this vae_utils reads version {VERSION} "
            "and older. Upgrade vae_utils."
        )
    try:
        cls = model_class(payload["model_class"])
        config = cls.config_class.from_dict(payload["model_config"])
        model = cls(config) if model is None else model
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} has an invalid {payload['model_class']} config {payload['model_config']}: "
                              f"{err}") from None
    _check_state_matches(path, model, payload["model_state"])
    _check_optimizer_state(path, model, payload["optimizer_state"])
    try:
        history = History.from_dict(payload["history"]) if payload["history"] is not None else None
        train_config = TrainConfig.from_dict(payload["train_config"]) if payload["train_config"] is not None else None
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} has an invalid history or train_config: {err}") from None
    if not isinstance(payload.get("metadata") or {}, dict):
        raise CheckpointError(f"{path} is not a vae_utils checkpoint: its metadata is not a dict.")
    return model, history, train_config


def _read_payload(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise CheckpointError(
            f"Cannot read {path}: permission denied. Make it readable (chmod u+r '{path}') or ask its owner."
        ) from None
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
    required = ("version", "model_class", "model_config", "model_state", "optimizer_state", "history", "train_config")
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


def _check_optimizer_state(path: Path, model: VAE, state: Any) -> None:
    """The optimizer state must load into ``torch.optim.Adam(model.parameters())``: one entry per
    parameter, in order, with moments of the parameter's shape."""
    if state is None:
        return
    fix = (
        "It was saved with an optimizer of another model. Load the model anyway by deleting the state: "
        "payload = torch.load(path, weights_only=True); payload['optimizer_state'] = None; torch.save(payload, path)"
    )
    groups, per_param = (state.get("param_groups"), state.get("state")) if isinstance(state, dict) else (None, None)
    if not (isinstance(groups, list) and isinstance(per_param, dict)):
        raise CheckpointError(f"The optimizer_state in {path} is not an optimizer state dict (param_groups, state).")
    try:
        ids = [index for group in state["param_groups"] for index in group["params"]]
    except (KeyError, TypeError):
        raise CheckpointError(f"The optimizer_state in {path} has param_groups without 'params'.") from None
    params = list(model.parameters())
    if len(ids) != len(params):
        raise CheckpointError(
            f"The optimizer state in {path} does not fit its model: it holds {len(ids)} parameter tensors, "
            f"the model has {len(params)}. {fix}"
        )
    for position, (index, param) in enumerate(zip(ids, params)):
        for name, value in (state["state"].get(index) or {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                raise CheckpointError(
                    f"The optimizer state in {path} does not fit its model: parameter {position}'s {name!r} "
                    f"has shape {list(value.shape)}, the parameter {list(param.shape)}. {fix}"
                )
