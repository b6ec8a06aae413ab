"""Evaluating a trained model: the test ELBO and the importance-weighted estimate of log p(x).

Both take any model of the library (``VAE``, ``FlowVAE``, ``ConditionalVAE``: see ``vae_utils.model``), go
through one batching path, ``eval_batches``, and evaluate in a fixed order on a fixed binarization of the
test set (seed ``EVAL_BINARIZE_SEED``), so numbers from ``fit``, the notebooks and ``python -m vae_utils
evaluate`` agree.

log p(x) ~ log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x), the standard VAE log-likelihood estimate
(Burda et al., 2016); it is a lower bound in expectation that rises toward log p(x) as K grows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .data import ImageDataset
from .objectives import estimate_elbo, iw_bound, split_batch
from .validation import check_images, check_int, check_labels

__all__ = ["evaluate_elbo", "mean_elbo_terms", "estimate_log_likelihood", "eval_batches", "EVAL_BINARIZE_SEED"]

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

Data = Any  # an ImageDataset, images [N, C, H, W], or an (images, labels) pair


def eval_batches(model: nn.Module, data: Data, batch_size: int, binarize_seed: int | None = None) -> Iterator[Any]:
    """Batches in order on the model's device: images ``x: float32 [B, C, H, W]`` in [0, 1], or ``(x, y)``
    pairs for a conditional model.

    data: an ``ImageDataset`` (uint8), binarized first with ``data.binarized(binarize_seed)`` unless
        ``binarize_seed`` is None; or images ``[N, C, H, W]`` (uint8 0..255, or float in [0, 1]) or an
        ``(images, labels)`` pair, used as given (checked by ``_checked`` at the entry points).
    """
    device = next(model.parameters()).device
    if isinstance(data, ImageDataset):
        data = data.to(device)
        data = data if binarize_seed is None else data.binarized(binarize_seed)
        yield from data.batches(batch_size, shuffle=False, labels=model.conditional)
        return
    images, labels = (data, None) if isinstance(data, Tensor) else data
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x
        yield x if labels is None else (x, labels[start : start + batch_size].to(device))


def _checked(caller: str, model: nn.Module, data: Data, batch_size: Any) -> int:
    """Refuse what would fail deep inside torch or give an empty or silently wrong result; return N.
    Images given as a tensor are checked once here, whole (one host sync), not per batch."""
    if not isinstance(model, nn.Module) or not hasattr(model, "posterior"):
        raise TypeError(f"{caller}: model must be a vae_utils VAE, FlowVAE or ConditionalVAE, got "
                        f"{type(model).__name__}.")
    check_int(caller, "batch_size", batch_size, 1)
    pair = isinstance(data, (tuple, list)) and len(data) == 2
    if not isinstance(data, (ImageDataset, Tensor)) and not pair:
        raise TypeError(f"{caller}: data must be an ImageDataset, images [N, C, H, W] or an (images, labels) "
                        f"pair, got {type(data).__name__}.")
    if model.conditional and isinstance(data, Tensor):
        raise TypeError(f"{caller}: a ConditionalVAE needs the labels: pass (images, labels) or an ImageDataset.")
    if pair and not model.conditional:
        raise TypeError(f"{caller}: a {type(model).__name__} takes no labels: pass the images alone.")
    n = len(data) if not pair else len(data[0])
    if n == 0:
        raise ValueError(f"{caller}: the data set is empty (0 images); pass at least one image.")
    if not isinstance(data, ImageDataset):
        images = data if isinstance(data, Tensor) else data[0]
        pixels = images.dtype == torch.uint8  # 0..255, divided by 255 per batch: in [0, 1] by construction
        check_images(images[:1].float() if pixels else images, model.config.image_shape,
                     next(model.parameters()).dtype, values=not pixels, caller=caller)
        if pair:
            check_labels(data[1], model.config.num_classes, (n,), data[1].device, caller)
    return n


@torch.no_grad()
def evaluate_elbo(model: nn.Module, data: Data, batch_size: int = 1000,
                  binarize_seed: int | None = EVAL_BINARIZE_SEED, seed: int = 0,
                  n_samples: int = 1) -> dict[str, float]:
    """The ELBO of ``model`` on ``data``: means over examples of the per-example ELBO (beta = 1),
    reconstruction E_q log p_θ(x|z) and KL(q_φ(z|x) || p(z)) (Monte Carlo for a flow), in nats.

    data: an ``ImageDataset``, images ``[N, C, H, W]`` (uint8 0..255 or float in [0, 1]), or an
        ``(images, labels)`` pair for a conditional model (which takes an ImageDataset's labels otherwise).
    binarize_seed: an ``ImageDataset`` is binarized with ``data.binarized(binarize_seed)`` first (the
        evaluation set for models trained with dynamic binarization); None uses the gray levels as they
        are. Tensors are used as given.
    seed: seeds the ``n_samples`` reparameterized samples per example, drawn by their own CPU generator, so
        the result is the same on every device and evaluating leaves the training run's random stream alone.

    Returns ``{"elbo", "reconstruction", "kl", "n"}`` (floats; ``n`` the number of examples).
    One host sync, at the end.
    """
    _checked("evaluate_elbo", model, data, batch_size)
    check_int("evaluate_elbo", "n_samples", n_samples, 1)
    return mean_elbo_terms(model, eval_batches(model, data, batch_size, binarize_seed), seed, n_samples)


@torch.no_grad()
def mean_elbo_terms(model: nn.Module, batches: Iterable[Any], seed: int = 0, n_samples: int = 1) -> dict[str, float]:
    """Means over examples of the ELBO's terms on ``batches`` (images, or (x, y) pairs), in nats.

    The noise comes from a CPU generator seeded with ``seed`` (drawn there and moved: the same numbers on
    every device, and the training run's random stream is left alone). The model is evaluated in eval mode
    and its mode restored. One host sync, at the end. Returns ``{"elbo", "reconstruction", "kl", "n"}``.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)  # [B, d] noise per batch: cheap to draw on the CPU
    was_training = model.training
    model.eval()
    sums, n = torch.zeros(3, device=device), 0
    try:
        for batch in batches:
            terms = estimate_elbo(model, *split_batch(batch), n_samples=n_samples, generator=generator)
            sums += torch.stack((terms.elbo.sum(), terms.reconstruction.sum(), terms.kl.sum()))
            n += terms.objective.shape[0]
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("mean_elbo_terms: the data set is empty.")
    elbo, reconstruction, kl = (sums / n).tolist()
    return {"elbo": elbo, "reconstruction": reconstruction, "kl": kl, "n": n}


@torch.inference_mode()
def estimate_log_likelihood(model: nn.Module, data_or_x: Data, k: int = 5000, batch_size: int | None = None,
                            chunk_size: int | None = None, seed: int = 0, progress: bool = True,
                            binarize_seed: int | None = EVAL_BINARIZE_SEED, allow_long: bool = False) -> Tensor:
    """Importance-weighted estimate of log p_θ(x) (log p_θ(x|y) for a conditional model) for each example,
    in nats, with the model's q_φ(z|x) as proposal (a flow's for a FlowVAE).

    Args:
        model: a ``VAE``, ``FlowVAE`` or ``ConditionalVAE``.
        data_or_x: an ``ImageDataset``, images ``[N, C, H, W]`` (uint8 0..255 or float in [0, 1]), or an
            ``(images, labels)`` pair for a conditional model.
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
    check_int("estimate_log_likelihood", "k (importance samples per example)", k, 1)
    n = _checked("estimate_log_likelihood", model, data_or_x, 1 if batch_size is None else batch_size)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    batch_size = batch_size or max(1, min(100, n))
    if chunk_size is None:
        budget = MAX_DECODED_ELEMENTS_CPU if device.type == "cpu" else MAX_DECODED_ELEMENTS
        chunk_size = max(1, min(k, budget // (batch_size * math.prod(model.config.image_shape))))
    check_int("estimate_log_likelihood", "chunk_size", chunk_size, 1)
    if n * k > MAX_DECODES and not allow_long:
        raise ValueError(_too_long_message(model, data_or_x, n, k, batch_size, chunk_size, binarize_seed))
    generator = torch.Generator(device=device).manual_seed(seed)
    bar = _bar(n, f"log p(x), K={k}") if progress else None
    was_training, estimates = model.training, []
    model.eval()
    try:
        for batch in eval_batches(model, data_or_x, batch_size, binarize_seed):
            estimates.append(_log_likelihood_of_batch(model, batch, dtype, k, chunk_size, generator))
            if bar is not None:
                bar.update(estimates[-1].shape[0])
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return torch.cat(estimates).cpu()


def _log_likelihood_of_batch(model: nn.Module, batch: Any, dtype: torch.dtype, k: int, chunk_size: int,
                             generator: torch.Generator | None) -> Tensor:
    """The IW bound of one batch: [B]. The images are cast to the model's dtype (a no-op for float32)."""
    x, y = split_batch(batch)
    x = x.to(dtype)
    return iw_bound(lambda z: model.log_joint(x, z, y), model.posterior(x, y), k, chunk_size, generator)


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img")


def _too_long_message(model, data, n: int, k: int, batch_size: int, chunk_size: int, binarize_seed) -> str:
    """Time one batch with a few samples and extrapolate to N x K decoder evaluations."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    first = data.subset(min(batch_size, n)) if isinstance(data, ImageDataset) else (
        data[:batch_size] if isinstance(data, Tensor) else (data[0][:batch_size], data[1][:batch_size]))
    batch = next(eval_batches(model, first, batch_size, binarize_seed))
    samples = min(k, max(chunk_size, 20))
    start = time.perf_counter()
    _log_likelihood_of_batch(model, batch, dtype, samples, chunk_size, None).tolist()
    images = split_batch(batch)[0].shape[0]
    seconds = (time.perf_counter() - start) / (samples * images) * n * k
    return (f"estimate_log_likelihood: {n:,} images x K={k:,} samples = {n * k:.3g} decoder evaluations, "
            f"about {_duration(seconds)} on {device} (timed on {images} image(s)). The usual report is "
            f"K=5000 on 10,000 images (5e+07). Use a smaller k or fewer images, or pass allow_long=True to run it.")


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} seconds"
