"""Choosing a device and seeding random number generators."""

from __future__ import annotations

import random

import torch

__all__ = ["pick_device", "seed_everything"]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """Return the device to compute on.

    device: None picks the best available one: "cuda", then "mps" (Apple GPUs), then "cpu".
        A string ("cpu", "cuda", "cuda:1", "mps") or a torch.device is checked and returned.

    Raises ValueError for a string torch does not know, and RuntimeError when the requested
    accelerator is not available here (with the way out: pass None or "cpu").
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")

    if isinstance(device, torch.device):
        chosen = device
    elif isinstance(device, str):
        try:
            chosen = torch.device(device)
        except RuntimeError as error:
            raise ValueError(
                f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N', 'mps', or None to pick "
                f"automatically ({error})"
            ) from None
    else:
        raise TypeError(f"device must be a str, a torch.device or None, not {type(device).__name__}")

    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {str(chosen)!r} was requested but CUDA is not available "
                f"(torch.cuda.is_available() is False; torch {torch.__version__}, built for CUDA "
                f"{torch.version.cuda}). Use device='cpu', or device=None to pick what is available."
            )
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {str(chosen)!r} was requested but only {torch.cuda.device_count()} CUDA "
                f"device(s) exist; use 'cuda:0'..'cuda:{torch.cuda.device_count() - 1}'."
            )
    elif chosen.type == "mps" and not _mps_available():
        raise RuntimeError(
            "device 'mps' was requested but the Apple MPS backend is not available here. "
            "Use device='cpu', or device=None to pick what is available."
        )
    return chosen


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's `random`, NumPy (if installed) and torch (CPU and every CUDA device).

    Returns a fresh CPU torch.Generator seeded with `seed`, for code that takes a `generator=`
    argument (drawing on the CPU generator and moving the result makes CPU and GPU runs agree).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must be in [-2**63, 2**64) (what torch.manual_seed takes), got {seed}")
    random.seed(seed)
    try:
        import numpy as np
    except ImportError:  # numpy is optional
        pass
    else:
        np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices
    return torch.Generator().manual_seed(seed)
