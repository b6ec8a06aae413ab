"""Semi-amortized inference: refine the encoder's q_φ(z|x) for each image with a few gradient steps.

The encoder predicts (mu, logvar) for every image with one shared network; the best Gaussian for a
single image is usually better (the *amortization gap*, Cremer et al., 2018). Starting from the
encoder's output, `refine` takes gradient steps on each image's own ELBO

    ELBO(x; mu, logvar) = E_{z ~ N(mu, diag exp(logvar))}[log p_θ(x, z) - log q(z)]

(reparameterized, fresh noise each step), with the model θ fixed (Kim et al., 2018; Krishnan et
al., 2018). Each image's ELBO depends only on its own (mu, logvar), so one batched Adam run is B
independent per-image optimizations. Finally every image's ELBO is evaluated before and after on
one fixed set of noise draws and the refined q is kept only where it is higher (accept-if-better),
so on that estimate refinement never lowers an image's ELBO. All values in nats, per image [B].
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch
from torch import Tensor

from .objectives import log_normal_diag, standard_normal

__all__ = ["Refinement", "elbo_with_noise", "gaussian_elbo", "refine"]


class Refinement(NamedTuple):
    """What `refine` returns. Tensors are detached, on the model's device."""

    mu: Tensor  # [B, d] refined means (the start where refinement did not help)
    logvar: Tensor  # [B, d] refined log-variances
    elbo_before: Tensor  # [B] ELBO of the starting q on the fixed evaluation noise
    elbo_after: Tensor  # [B] ELBO of the returned q on the same noise; >= elbo_before
    accepted: Tensor  # [B] bool: the refined q was kept
    seconds: float  # wall time of the whole refinement


def elbo_with_noise(model, x: Tensor, mu: Tensor, logvar: Tensor, eps: Tensor, chunk_size: int = 50) -> Tensor:
    """ELBO estimate with given noise: mean over S of log p_θ(x, z_s) - log q(z_s), z_s = mu + exp(logvar/2) eps_s.

    model: anything with ``log_joint(x [B, ...], z [S, B, d]) -> [S, B]`` (a VAE, a FlowVAE, a toy model).
    x: [B, C, H, W]; mu, logvar: [B, d]; eps: [S, B, d]. Returns [B]. A deterministic function of
    (mu, logvar) for fixed eps; differentiable in mu and logvar. Computed `chunk_size` draws at a time.
    """
    total = 0.0
    for start in range(0, eps.shape[0], chunk_size):
        z = mu + torch.exp(0.5 * logvar) * eps[start : start + chunk_size]
        total = total + (model.log_joint(x, z) - log_normal_diag(z, mu, logvar)).sum(0)
    return total / eps.shape[0]


def refine(model, x: Tensor, mu: Tensor | None = None, logvar: Tensor | None = None, steps: int = 50,
           lr: float = 1e-2, n_samples: int = 16, eval_samples: int = 100, optimizer: str = "adam", seed: int = 0,
           progress: bool = False) -> Refinement:
    """Per-image gradient ascent on the ELBO from the encoder's q (semi-amortized inference).

    model: a VAE (or anything with ``log_joint``; with ``mu``/``logvar`` None it also needs ``encode``).
    x: [B, C, H, W]; mu, logvar: [B, d], the starting q (default: ``model.encode(x)``).
    steps: gradient steps; lr: step size; n_samples: reparameterized samples per image per step
    (fresh each step); optimizer: "adam" or "sgd". eval_samples: the fixed noise [S, B, d] on
    which before and after are compared (accept-if-better per image). The model's parameters are
    not changed and get no gradients. Returns a `Refinement`.
    """
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}.")
    for name, value in (("steps", steps), ("n_samples", n_samples), ("eval_samples", eval_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "steps" else 1):
            raise ValueError(f"refine: {name} must be a positive int (steps may be 0), got {value!r}.")
    start_time = time.perf_counter()
    if mu is None or logvar is None:
        with torch.no_grad():
            mu, logvar = model.encode(x)
    mu0, logvar0 = mu.detach(), logvar.detach()
    generator = torch.Generator(device=mu0.device).manual_seed(seed)
    eval_noise = standard_normal((eval_samples, *mu0.shape), mu0, generator)  # [S_eval, B, d]

    params = [mu0.clone().requires_grad_(True), logvar0.clone().requires_grad_(True)]
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="refining q per image", unit="step")
    for _ in iterator:
        eps = standard_normal((n_samples, *mu0.shape), mu0, generator)
        loss = -elbo_with_noise(model, x, params[0], params[1], eps).sum()  # sum: images are independent
        grads = torch.autograd.grad(loss, params)  # only mu and logvar: the model gets no gradients
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()

    with torch.no_grad():
        before = elbo_with_noise(model, x, mu0, logvar0, eval_noise)
        after = elbo_with_noise(model, x, params[0], params[1], eval_noise)
        accepted = after > before
        keep = accepted[:, None]
        mu_out = torch.where(keep, params[0], mu0)
        logvar_out = torch.where(keep, params[1], logvar0)
        after = torch.where(accepted, after, before)
    return Refinement(mu_out, logvar_out, before, after, accepted, time.perf_counter() - start_time)


@torch.no_grad()
def gaussian_elbo(model, x: Tensor, mu: Tensor, logvar: Tensor, n_samples: int = 100, seed: int = 0) -> Tensor:
    """ELBO of q = N(mu, diag exp(logvar)) per image with `n_samples` fresh draws (seeded): [B], nats.

    model: anything with ``log_joint``; x: [B, C, H, W]; mu, logvar: [B, d]. Use it to score a
    refined q on noise that refinement never saw (an unbiased estimate of its ELBO).
    """
    generator = torch.Generator(device=mu.device).manual_seed(seed)
    eps = standard_normal((n_samples, *mu.shape), mu, generator)
    return elbo_with_noise(model, x, mu, logvar, eps)
