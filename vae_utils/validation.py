"""Input checks, in one place: what the public entry points and the configs call before any math runs.

The math itself (``objectives``, a model's ``posterior`` / ``decoder_output`` / ``log_joint``, the training
and evaluation loops) checks nothing: the loops get their batches from an ``ImageDataset``, whose uint8
pixels are in [0, 1] by construction once divided by 255, so no step ever waits for the device to
validate a batch. Every message names the problem and the fix.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

__all__ = ["is_int", "check_int", "check_real", "check_flag", "check_images", "check_latents", "check_labels",
           "model_labels", "check_model_inputs"]


# ------------------------------------------------------------------------------ plain values (configs)
def is_int(value: Any) -> bool:
    """An integer that is not a bool (True is an int to Python, never to a config)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(owner: str, name: str, value: Any, minimum: int | None = None, example: str = "") -> int:
    """``value`` as an int >= ``minimum``, or a ValueError naming ``owner.name`` (with an example)."""
    if not is_int(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        hint = f"; write e.g. {example}" if example else ""
        raise ValueError(f"{owner}.{name} must be an int{bound}, got {value!r} ({type(value).__name__}){hint}.")
    return int(value)


def check_real(owner: str, name: str, value: Any, bound: str = ">= 0", example: str = "") -> float:
    """``value`` as a finite float with ``bound`` ("> 0" or ">= 0"), or a ValueError naming ``owner.name``."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    ok = ok and (value > 0 if bound == "> 0" else value >= 0)
    if not ok:
        hint = " (a number, not a string: no quotes)" if isinstance(value, str) else ""
        example = f"; write e.g. {example}" if example else ""
        raise ValueError(f"{owner}.{name} must be a finite number {bound}, got {value!r}{hint}{example}.")
    return float(value)


def check_flag(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be True or False, got {value!r}; write {name}=False (without quotes).")
    return value


# ------------------------------------------------------------------------------ tensors
def _not_a_tensor(x: Any, caller: str, expected: str) -> str:
    kind = type(x).__name__
    if type(x).__module__ == "numpy" and hasattr(x, "shape"):
        pixels = " (and 0..255 pixels with torch.as_tensor(x).float() / 255)" if "images" in expected else ""
        return (f"{caller} takes a torch.Tensor {expected}, got a numpy array (dtype {x.dtype}, shape "
                f"{list(x.shape)}): convert it with torch.as_tensor(x){pixels}")
    if isinstance(x, (list, tuple)):
        return (f"{caller} takes a torch.Tensor {expected}, got a {kind}: convert it with torch.as_tensor(x) "
                "(a list of image tensors: torch.stack(x))")
    return f"{caller} takes a torch.Tensor {expected}, got {kind}"


def _shape_fix(x: Tensor, image_shape: tuple[int, int, int]) -> str:
    """How to turn ``x`` into ``[B, *image_shape]``, without advice that would scramble channels."""
    c, h, w = image_shape
    shape = tuple(x.shape)
    view = f"x.view(-1, {c}, {h}, {w})"
    if shape == image_shape:
        return f"for a single image use x.unsqueeze(0), or reshape it with {view}"
    if x.dim() == 2 and shape[1] == c * h * w:
        return f"these look like flattened images: reshape them with {view}"
    if c == 1 and x.dim() == 3 and shape[1:] == (h, w):
        return f"add the channel dimension with x.unsqueeze(1) (or {view})"
    if x.dim() == 4 and shape[2:] == (h, w):  # another channel count: never reshape those
        fix = (f"these are {shape[1]}-channel images but this model was built for image_shape={image_shape}; images "
               f"with {shape[1]} channels need a model built with VAEConfig(image_shape=({shape[1]}, {h}, {w}))")
        return fix + (", or make them grey first with x.mean(dim=1, keepdim=True)" if c == 1 and shape[1] == 3 else "")
    if x.dim() == 4 and shape[1:3] == (h, w) and shape[3] == c:
        return "these are channels-last images [B, H, W, C]: move the channels with x.permute(0, 3, 1, 2)"
    return (f"this model was built for image_shape={image_shape}; "
            "build a VAE(VAEConfig(image_shape=...)) for images of another size")


def _dtype_problem(x: Tensor, dtype: torch.dtype, caller: str, what: str = "images") -> str | None:
    if not x.is_floating_point():
        if what != "images":
            return f"{caller} expected floating-point {what}, got dtype {x.dtype}; convert with x.float()"
        fix = "x.float()" if x.dtype == torch.bool else "x.float() / 255"
        return (f"{caller} expected floating-point images in [0, 1], got dtype {x.dtype}; convert with {fix} "
                "(or use ImageDataset.float_images())")
    if x.dtype == dtype or _autocast(x):  # under torch.autocast mixed float dtypes are expected
        return None
    if dtype == torch.float32:
        return f"{caller} got {x.dtype} {what} but the model is float32: convert them with x.float()"
    return (f"{caller} got {x.dtype} {what} but the model's weights are {dtype} (was .double() or .half() called "
            f"on it?): convert the model back with model.float() (vae_utils models are float32), or the {what} "
            f"with x.to({dtype})")


def _autocast(x: Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled()


def _value_problem(x: Tensor, caller: str) -> str | None:
    """One reduction over x (and one host sync): None when every value is finite and in [0, 1]."""
    low, high = torch.stack(torch.aminmax(x.detach())).tolist()
    if low >= 0.0 and high <= 1.0:  # False for NaN too
        return None
    where = f"{caller} expected images with values in [0, 1]"
    if math.isnan(low) or math.isnan(high):
        return (f"{where}, but {int(torch.isnan(x).sum())} value(s) are NaN: find where they come from "
                "(torch.isnan(x).nonzero())")
    if math.isinf(low) or math.isinf(high):
        return f"{where}, but {int(torch.isinf(x).sum())} value(s) are infinite (range [{low:g}, {high:g}])"
    if low >= 0.0 and 1.5 < high <= 255.0:
        return f"{where}, got values in [{low:g}, {high:g}]: these look like 0..255 pixels; divide by 255 (x / 255)"
    if low >= 0.0 and high <= 1.5:
        return (f"{where}, got values up to {high:g}: if they are only slightly off (e.g. after resizing or "
                "augmentation), clamp them with x.clamp(0, 1)")
    if low < 0.0:
        return (f"{where}, got negative values (range [{low:g}, {high:g}]): if the images were normalized (e.g. "
                "transforms.Normalize), undo it (x * std + mean); otherwise rescale them into [0, 1]")
    return f"{where}, got values up to {high:g}: rescale them into [0, 1] (e.g. x / x.max())"


def check_images(x: Any, image_shape: tuple[int, int, int], dtype: torch.dtype = torch.float32,
                 device: torch.device | None = None, values: bool = True, caller: str = "VAE") -> None:
    """Raise a clear error unless ``x`` is a batch of images a model with ``image_shape`` can take.

    Checks, in order: a ``torch.Tensor`` (numpy arrays and lists are refused with the conversion); shape
    ``[B, C, H, W]`` with ``(C, H, W) == image_shape`` (with the fix); at least one image; floating point of
    ``dtype`` (uint8 -> ``x.float() / 255``, float64 -> ``x.float()``); on ``device`` (when given); and with
    ``values=True`` every value finite and in [0, 1] (one reduction and host sync). TypeError for the type
    and dtype, ValueError otherwise.
    """
    c, h, w = image_shape
    if not isinstance(x, Tensor):
        raise TypeError(_not_a_tensor(x, caller, f"of images [B, {c}, {h}, {w}]"))
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(f"{caller} expected images of shape [B, C, H, W] = [B, {c}, {h}, {w}], got "
                         f"{list(x.shape)}: " + _shape_fix(x, tuple(image_shape)))
    if x.shape[0] == 0:
        raise ValueError(f"{caller} got an empty batch (shape {list(x.shape)}): pass at least one image")
    problem = _dtype_problem(x, dtype, caller)
    if problem:
        raise TypeError(problem)
    if device is not None and x.device != device:
        raise ValueError(f"{caller} got images on {x.device} but the model is on {device}: "
                         "move them with x.to(model.device)")
    problem = _value_problem(x, caller) if values else None
    if problem:
        raise ValueError(problem)


def check_latents(model: Any, z: Any, caller: str) -> None:
    """Raise a clear error unless ``z: [..., d]`` fits ``model`` (d, dtype and device of its weights)."""
    d = model.config.latent_dim
    if not isinstance(z, Tensor):
        raise TypeError(_not_a_tensor(z, caller, f"of latents [..., {d}]"))
    if z.shape[-1:] != (d,):
        shape = f"[..., B, {d}]" if model.conditional else f"[..., {d}]"  # a conditional model's codes meet labels [B]
        raise ValueError(f"{caller.split('.')[-1]} expected latents of shape {shape}, got {list(z.shape)}")
    reference = next(model.parameters())
    problem = _dtype_problem(z, reference.dtype, caller, "latents")
    if problem:
        raise TypeError(problem)
    if z.device != reference.device:
        raise ValueError(f"{caller} got latents on {z.device} but the model is on {reference.device}: "
                         "move them with z.to(model.device)")


def check_labels(y: Any, num_classes: int, shape: tuple[int, ...], device: torch.device, caller: str) -> Tensor:
    """``y`` as int64 labels of ``shape`` on ``device``: an int (the same label everywhere), a list, or an
    integer tensor of ``shape`` with values in 0 .. num_classes-1; a clear error otherwise (one host sync)."""
    if is_int(y):
        y = torch.full(shape, int(y), dtype=torch.long)
    elif isinstance(y, (list, tuple)):
        y = torch.as_tensor(y)
    elif not isinstance(y, Tensor):
        raise TypeError(f"{caller}: labels must be an int, a list of ints or an integer tensor {list(shape)}, "
                        f"got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{caller}: labels must be integer class indices, got dtype {y.dtype}; use y.long()")
    if tuple(y.shape) != tuple(shape):
        raise ValueError(f"{caller}: expected labels of shape {list(shape)} (one per image or code), "
                         f"got {list(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{caller}: labels must be in 0 .. {num_classes - 1} (num_classes={num_classes}), got values "
                         f"from {int(y.min())} to {int(y.max())}")
    return y.to(device, torch.long)


def model_labels(model: Any, y: Any, shape: tuple[int, ...], caller: str) -> Tensor | None:
    """A conditional model's labels ``y`` for images or codes of ``shape``, checked; None for a model that
    takes no labels (and refuses any)."""
    if not model.conditional:
        if y is not None:
            raise TypeError(f"{caller}: a {type(model).__name__} takes no labels; a ConditionalVAE does")
        return None
    if y is None:
        raise TypeError(f"{caller}: a {type(model).__name__} needs the labels y (one int, or one per image or code)")
    return check_labels(y, model.config.num_classes, shape, next(model.parameters()).device, caller)


def check_model_inputs(model: Any, x: Any, y: Any, caller: str, values: bool = True) -> Tensor | None:
    """Check images ``x`` (and a conditional model's labels ``y``) for ``model``; returns the labels as a
    tensor, or None for a model that takes none."""
    reference = next(model.parameters())
    check_images(x, model.config.image_shape, reference.dtype, reference.device, values=values, caller=caller)
    return model_labels(model, y, (x.shape[0],), caller)
