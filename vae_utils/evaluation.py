"""Evaluating a trained VAE: the test ELBO and the importance-weighted estimate of log p(x).

Both go through one batching path, `image_batches`, and both evaluate in a fixed order on a fixed
binarization of the test set (seed `EVAL_BINARIZE_SEED`), so numbers from `fit`, the notebooks and
`python -m vae_utils evaluate` agree.

log p(x) ~ log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x), the standard VAE log-likelihood estimate
(Burda et al., 2016); it is a lower bound in expectation that rises toward log p(x) as K grows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .data import ImageDataset
from .model import mark_checked
from .objectives import ELBO, importance_weighted_bound, vae_elbo

__all__ = ["evaluate_elbo", "mean_elbo_terms", "estimate_log_likelihood", "image_batches", "EVAL_BINARIZE_SEED"]

# Test sets are binarized with this seed, so test ELBOs of different runs (and of `python -m
# vae_utils evaluate`) are computed on the same binary images.
EVAL_BINARIZE_SEED = 0

# The largest decoded tensor ([chunk, batch, C, H, W] floats) one step may create. A GPU wants big
# steps: 16M floats = 64 MB. On a CPU, 1M floats (4 MB) keep the likelihood's elementwise passes in
# cache: 2.7x -> 1.3x the matrix-product floor (benchmarks/RESULTS.md), and a lower memory peak.
MAX_DECODED_ELEMENTS = 16 * 2**20
MAX_DECODED_ELEMENTS_CPU = 2**20

# estimate_log_likelihood refuses more decoder evaluations (images x K) than this unless
# allow_long=True: 4x the usual report (10,000 test images at K = 5000).
MAX_DECODES = 2 * 10**8


def image_batches(
    data: ImageDataset | Tensor,
    batch_size: int,
    device: torch.device | str,
    binarize_seed: int | None = None,
) -> Iterator[Tensor]:
    """Batches ``x: float32 [B, C, H, W]`` in [0, 1], in order, on ``device``.

    data: an ``ImageDataset`` (uint8), binarized first with ``data.binarized(binarize_seed)``
        unless ``binarize_seed`` is None; or images ``[N, C, H, W]`` (uint8 0..255, or float in
        [0, 1]), used as given.
    """
    if isinstance(data, ImageDataset):
        data = data.to(device)
        if binarize_seed is not None:
            data = data.binarized(binarize_seed)
        yield from data.batches(batch_size, shuffle=False)
        return
    images = data.to(device)
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        # uint8 / 255 is in [0, 1] by construction: marked, so encode skips its per-call value check.
        yield mark_checked(x.float().div_(255)) if x.dtype == torch.uint8 else x


def _check_inputs(caller: str, model: nn.Module, data, batch_size) -> int:
    """Refuse what would fail deep inside torch or give an empty result; return N."""
    if not isinstance(model, nn.Module) or not hasattr(model, "encode"):
        raise TypeError(f"{caller}: model must be a vae_utils VAE, got {type(model).__name__}.")
    if not isinstance(data, (ImageDataset, Tensor)):
        raise TypeError(
            f"{caller}: data must be an ImageDataset or an image tensor [N, C, H, W], got {type(data).__name__}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{caller}: batch_size must be an int >= 1, got {batch_size!r}.")
    n = len(data)
    if n == 0:
        raise ValueError(f"{caller}: the data set is empty (0 images); pass at least one image.")
    return n


@torch.no_grad()
def evaluate_elbo(
    model: nn.Module,
    data: ImageDataset | Tensor,
    batch_size: int = 1000,
    binarize_seed: int | None = EVAL_BINARIZE_SEED,
    seed: int = 0,
) -> dict[str, float]:
    """The ELBO of ``model`` on ``data``: means over examples of the per-example ELBO (beta = 1),
    reconstruction E_q log p_θ(x|z) and KL(q_φ(z|x) || p(z)), in nats. Higher ELBO is better.

    data: an ``ImageDataset``, or images ``[N, C, H, W]`` (uint8 0..255 or float in [0, 1]).
    binarize_seed: an ``ImageDataset`` is binarized with ``data.binarized(binarize_seed)`` first
        (the evaluation set for models trained with dynamic binarization); None uses the gray
        levels as they are. Tensors are used as given.
    seed: seeds the one reparameterized sample per example, drawn by its own CPU generator, so the
        result is the same on every device and evaluating leaves the training run's random stream alone.

    Returns ``{"elbo", "reconstruction", "kl", "n"}`` (floats; ``n`` the number of examples).
    One host sync, at the end.
    """
    _check_inputs("evaluate_elbo", model, data, batch_size)
    batches = image_batches(data, batch_size, next(model.parameters()).device, binarize_seed)
    return mean_elbo_terms(model, batches, lambda x, generator: vae_elbo(model, x, generator=generator),
                           seed, "evaluate_elbo")


@torch.no_grad()
def mean_elbo_terms(model: nn.Module, batches: Iterable[Any], elbo_of_batch: Callable[[Any, torch.Generator], ELBO],
                    seed: int = 0, caller: str = "mean_elbo_terms") -> dict[str, float]:
    """Means over examples of an ELBO's fields, in nats: the loop behind ``evaluate_elbo`` and its twins
    for flows and conditional VAEs.

    batches: what ``elbo_of_batch(batch, generator)`` takes (images x, or (x, y) pairs); it returns an
    ``ELBO`` with [B] fields. Its noise comes from a CPU generator seeded with ``seed`` (drawn there and
    moved: the same numbers on every device, and the training run's random stream is left alone).
    The model is evaluated in eval mode and its mode restored. One host sync, at the end.
    Returns ``{"elbo", "reconstruction", "kl", "n"}``; ValueError when ``batches`` is empty.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)  # [B, d] noise per batch: cheap to draw on the CPU
    was_training = model.training
    model.eval()
    sums, n = torch.zeros(3, device=device), 0
    try:
        for batch in batches:
            terms = elbo_of_batch(batch, generator)
            sums += torch.stack((terms.elbo.sum(), terms.reconstruction.sum(), terms.kl.sum()))
            n += terms.elbo.shape[0]
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError(f"{caller}: the data set is empty.")
    elbo, reconstruction, kl = (sums / n).tolist()
    return {"elbo": elbo, "reconstruction": reconstruction, "kl": kl, "n": n}


@torch.inference_mode()
def estimate_log_likelihood(
    model: nn.Module,
    data_or_x: ImageDataset | Tensor,
    k: int = 5000,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    binarize_seed: int | None = EVAL_BINARIZE_SEED,
    allow_long: bool = False,
) -> Tensor:
    """Importance-weighted estimate of log p_θ(x) for each example, in nats, with q_φ(z|x) as proposal.

    Args:
        model: a ``VAE`` (anything with ``encode`` and ``log_joint``).
        data_or_x: an ``ImageDataset``, or images ``[N, C, H, W]`` (uint8 0..255 or float in [0, 1]).
        k: importance samples K per example (5000 is the usual reporting setting; K = 1 is the ELBO).
        batch_size: examples per step; chunk_size: samples per step. Defaults keep the decoded
            ``[chunk, batch, C, H, W]`` tensor at most 4 MB on a CPU and 64 MB on a GPU, so memory
            does not grow with K or N.
        seed: seeds the samples (a generator on the model's device); same seed, same estimate.
        progress: a tqdm bar over examples.
        binarize_seed: an ``ImageDataset`` is first binarized with ``data.binarized(binarize_seed)``,
            the same fixed binarization ``fit`` and ``evaluate_elbo`` evaluate on (for models trained
            with dynamic binarization); None uses the gray levels. Tensors are used as given.
        allow_long: N x K above ``MAX_DECODES`` (4x the usual 10,000 images at K = 5000) is refused
            with an estimate of the time it would take; True runs it anyway.

    Returns ``[N]`` on the CPU, in the model's dtype (float32 normally). ``.mean()`` is the usual
    reported test log-likelihood.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (importance samples per example) must be an int >= 1, got {k!r}.")
    n = _check_inputs("estimate_log_likelihood", model, data_or_x, 1 if batch_size is None else batch_size)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    pixels = math.prod(data_or_x.image_shape if isinstance(data_or_x, ImageDataset) else data_or_x.shape[1:])
    batch_size = batch_size or max(1, min(100, n))
    if chunk_size is None:
        budget = MAX_DECODED_ELEMENTS_CPU if device.type == "cpu" else MAX_DECODED_ELEMENTS
        chunk_size = max(1, min(k, budget // (batch_size * pixels)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1 or None, got {chunk_size!r}.")
    if n * k > MAX_DECODES and not allow_long:
        raise ValueError(_too_long_message(model, data_or_x, n, k, batch_size, chunk_size, binarize_seed, dtype))

    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    estimates = []
    bar = _bar(n, f"log p(x), K={k}") if progress else None
    try:
        for x in image_batches(data_or_x, batch_size, device, binarize_seed):
            x = x.to(dtype)  # float32 batches; a no-op unless the model is in another precision
            mu, logvar = model.encode(x)
            estimates.append(
                importance_weighted_bound(model.log_joint, x, mu, logvar, k, chunk_size=chunk_size, generator=generator)
            )
            if bar is not None:
                bar.update(x.shape[0])
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return torch.cat(estimates).cpu()


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img")


def _too_long_message(model, data, n: int, k: int, batch_size: int, chunk_size: int, binarize_seed, dtype) -> str:
    """Time one batch with a few samples and extrapolate to N x K decoder evaluations."""
    device = next(model.parameters()).device
    first = data[:batch_size] if isinstance(data, Tensor) else data.subset(min(batch_size, n))
    x = next(image_batches(first, batch_size, device, binarize_seed)).to(dtype)
    samples = min(k, max(chunk_size, 20))
    start = time.perf_counter()
    mu, logvar = model.encode(x)
    importance_weighted_bound(model.log_joint, x, mu, logvar, samples, chunk_size=chunk_size).tolist()
    seconds = (time.perf_counter() - start) / (samples * x.shape[0]) * n * k
    return (
        f"estimate_log_likelihood: {n:,} images x K={k:,} samples = {n * k:.3g} decoder evaluations, "
        f"about {_duration(seconds)} on {device} (timed on {x.shape[0]} image(s)). The usual report is "
        f"K=5000 on 10,000 images (5e+07). Use a smaller k or fewer images, or pass allow_long=True to run it."
    )


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} seconds"
