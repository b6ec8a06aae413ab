"""The importance-weighted estimate of log p(x) for a trained VAE, in bounded memory.

log p(x) ~ log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x), the standard VAE log-likelihood estimate
(Burda et al., 2016); it is a lower bound in expectation that rises toward log p(x) as K grows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .data import ImageDataset
from .objectives import importance_weighted_bound
from .training import EVAL_BINARIZE_SEED, _eval_batches

__all__ = ["estimate_log_likelihood"]

# The largest decoded tensor ([chunk, batch, C, H, W] floats) one step may create. A GPU wants big
# steps: 16M floats = 64 MB. On a CPU, 1M floats (4 MB) keep the likelihood's elementwise passes in
# cache: 2.7x -> 1.3x the matrix-product floor (benchmarks/RESULTS.md), and a lower memory peak.
MAX_DECODED_ELEMENTS = 16 * 2**20
MAX_DECODED_ELEMENTS_CPU = 2**20


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
) -> Tensor:
    """Importance-weighted estimate of log p(x) for each example, in nats, with q(z|x) as proposal.

    Args:
        model: a ``VAE`` (anything with ``encode`` and ``log_joint``).
        data_or_x: an ``ImageDataset``, or images ``[N, C, H, W]`` (uint8 0..255 or float in [0, 1]).
        k: importance samples per example (5000 is the usual reporting setting; k=1 is the ELBO).
        batch_size: examples per step; chunk_size: samples per step. Defaults keep the decoded
            ``[chunk, batch, C, H, W]`` tensor at most 4 MB on a CPU and 64 MB on a GPU, so memory
            does not grow with k or N.
        seed: seeds the samples (a generator on the model's device); same seed, same estimate.
        progress: a tqdm bar over examples.
        binarize_seed: an ``ImageDataset`` is first binarized with ``data.binarized(binarize_seed)``,
            the same fixed binarization ``fit`` and ``evaluate_elbo`` evaluate on (for models trained
            with dynamic binarization); None uses the gray levels. Tensors are used as given.

    Returns ``[N]`` on the CPU, in the model's dtype (float32 normally). ``.mean()`` is the usual
    reported test log-likelihood.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (importance samples per example) must be an int >= 1, got {k!r}.")
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    if isinstance(data_or_x, ImageDataset):
        data = data_or_x.to(device)
        if binarize_seed is not None:
            data = data.binarized(binarize_seed)
        images = data.images
    elif isinstance(data_or_x, Tensor):
        images = data_or_x.to(device)
    else:
        raise TypeError(
            f"data_or_x must be an ImageDataset or an image tensor [N, C, H, W], got {type(data_or_x).__name__}."
        )
    n = images.shape[0]
    pixels = math.prod(images.shape[1:]) if images.dim() > 1 else 1
    if batch_size is None:
        batch_size = max(1, min(100, n))
    if chunk_size is None:
        budget = MAX_DECODED_ELEMENTS_CPU if device.type == "cpu" else MAX_DECODED_ELEMENTS
        chunk_size = max(1, min(k, budget // (batch_size * pixels)))
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}.")

    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    estimates = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"log p(x), K={k}", unit="img")
    try:
        for x in _eval_batches(images, batch_size, device):
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
    if not estimates:
        return torch.empty(0)
    return torch.cat(estimates).cpu()
