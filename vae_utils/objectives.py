"""Objectives for latent-variable models: log-densities, KL terms, the ELBO and the IW bound.

Pure functions on tensors. Conventions (all values in nats):

* per-example quantities are SUMMED over data and latent dimensions and returned with shape [B]
  (or [S, B] / [..., B] when leading sample dimensions are present);
* the ELBO is maximized; the training loss is the NEGATIVE ELBO, MEAN over the batch;
* a Gaussian is parameterized by its mean `mu` and log-variance `logvar` (diagonal covariance).

The generic estimators (`elbo_monte_carlo`, `importance_weighted_bound`) work for any model
that provides `log_joint(x: [B, ...], z: [S, B, d]) -> [S, B]`, the log-density log p(x, z).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "log_normal_diag",
    "log_standard_normal",
    "gaussian_kl",
    "gaussian_kl_per_dim",
    "monte_carlo_kl",
    "bernoulli_log_likelihood",
    "gaussian_log_likelihood",
    "ELBO",
    "elbo_terms",
    "vae_elbo",
    "negative_elbo_loss",
    "reparameterize",
    "standard_normal",
    "elbo_objective",
    "iw_objective",
    "elbo_monte_carlo",
    "importance_weighted_bound",
    "effective_sample_size",
]

LOG_2PI = math.log(2.0 * math.pi)

LogJoint = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------- log-densities
def log_normal_diag(z: Tensor, mu: Tensor, logvar: Tensor | float) -> Tensor:
    """log N(z; mu, diag(exp(logvar))), SUMMED over the last dimension.

    z: [..., d]; mu, logvar: broadcastable to z. Returns [...] (positive or negative; a log-density).
    """
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I), SUMMED over the last dimension. z: [..., d] -> [...]."""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)


def bernoulli_log_likelihood(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)), SUMMED over the last 3 (pixel) dimensions. Always <= 0.

    x: [B, C, H, W] with values in [0, 1] (binary data; grey values give the usual cross-entropy,
        which is not a normalized density); logits: [B, C, H, W], or with leading sample
        dimensions [..., B, C, H, W] -- x and logits broadcast against each other.
    Returns [B] (or [..., B]). Computed as -binary_cross_entropy_with_logits, which is
    numerically stable for large |logits| (never takes log(sigmoid) of a saturated value).
    """
    x, logits = torch.broadcast_tensors(x, logits)
    log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return log_px.sum(dim=(-3, -2, -1))


def gaussian_log_likelihood(x: Tensor, mean: Tensor, logvar: Tensor | float) -> Tensor:
    """log N(x; mean, exp(logvar)) per pixel, SUMMED over the last 3 (pixel) dimensions.

    x: [B, C, H, W]; mean: [B, C, H, W] or [..., B, C, H, W] (leading sample dims broadcast);
    logvar: a float or tensor broadcastable to mean (a scalar for a fixed std, or [C, H, W] for a
    learned per-pixel variance). Returns [B] (or [..., B]). A density, so it can be positive.
    """
    logvar = torch.as_tensor(logvar, dtype=mean.dtype, device=mean.device)
    log_px = -0.5 * (LOG_2PI + logvar + (x - mean).pow(2) * torch.exp(-logvar))
    # A scalar logvar broadcasts over the pixels through (x - mean), so every pixel counts it once.
    return log_px.sum(dim=(-3, -2, -1))


# --------------------------------------------------------------------------- KL terms
def gaussian_kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """Closed-form KL(N(mu, exp(logvar)) || N(0, 1)) for each latent dimension. >= 0.

    mu, logvar: [B, d] -> [B, d] (any matching shapes work; no reduction).
    KL = 0.5 * (mu^2 + exp(logvar) - 1 - logvar).
    """
    return 0.5 * (mu.pow(2) + torch.exp(logvar) - 1.0 - logvar)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """Closed-form KL(N(mu, diag exp(logvar)) || N(0, I)), SUMMED over the latent dim. >= 0.

    mu, logvar: [B, d] -> [B].
    """
    return gaussian_kl_per_dim(mu, logvar).sum(-1)


def monte_carlo_kl(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """Monte Carlo estimate of KL(q || N(0, I)) with q = N(mu, diag exp(logvar)).

    z: [S, B, d] samples from q; mu, logvar: [B, d]. Returns [B]: the MEAN over the S samples of
    log q(z) - log p(z) (each summed over d). Unbiased; a single estimate can be negative.
    """
    return (log_normal_diag(z, mu, logvar) - log_standard_normal(z)).mean(0)


# --------------------------------------------------------------------------- the VAE ELBO
class ELBO(NamedTuple):
    """Per-example terms of a training objective, each [B], in nats.

    ``objective`` is what training maximizes: reconstruction - beta * kl for the (beta-)ELBO, or the
    K-sample importance-weighted bound for ``iw_objective``. ``elbo`` is always the ELBO itself,
    reconstruction - kl (beta = 1; for ``iw_objective`` the K-sample estimate of it), whatever was
    optimized. ``kl`` is stored unweighted, so its value does not depend on beta.
    """

    objective: Tensor  # [B]  what training maximizes
    reconstruction: Tensor  # [B]  E_q[log p(x|z)], summed over pixels
    kl: Tensor  # [B]  KL(q(z|x) || p(z)), summed over latent dims, unweighted

    @property
    def elbo(self) -> Tensor:
        """The ELBO, reconstruction - kl: [B] (<= log p(x) in expectation)."""
        return self.reconstruction - self.kl


def elbo_terms(reconstruction: Tensor, kl: Tensor, beta: float = 1.0) -> ELBO:
    """Assemble the terms: objective = reconstruction - beta * kl. All [B], no reduction."""
    return ELBO(reconstruction - beta * kl, reconstruction, kl)


def vae_elbo(
    model,
    x: Tensor,
    beta: float = 1.0,
    n_samples: int = 1,
    analytic_kl: bool = True,
    generator: torch.Generator | None = None,
) -> ELBO:
    """Reparameterized Monte Carlo estimate of a VAE's ELBO for each example (maximize it).

    model: a `vae_utils.VAE` (anything with encode / reparameterize / decode / log_likelihood).
    x: [B, C, H, W]. The reconstruction term E_q[log p(x|z)] is the MEAN over `n_samples`
    reparameterized z ~ q(z|x), summed over pixels; the KL term is the closed form
    (`analytic_kl=True`, the default: lower variance) or the Monte Carlo estimate on the same
    samples. Returns ELBO with fields [B]; objective = reconstruction - beta * kl. Gradients flow to
    both encoder and decoder. The training loss is `negative_elbo_loss(vae_elbo(...))`.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    mu, logvar = model.encode(x)
    z = model.reparameterize(mu, logvar, n_samples=n_samples, generator=generator)  # [S, B, d]
    reconstruction = model.log_likelihood(x, model.decode(z)).mean(0)  # [S, B] -> [B]
    kl = gaussian_kl(mu, logvar) if analytic_kl else monte_carlo_kl(z, mu, logvar)
    return elbo_terms(reconstruction, kl, beta)


def negative_elbo_loss(elbo: ELBO) -> Tensor:
    """The training loss: -elbo.objective MEAN over the batch (a scalar, nats per example; minimize)."""
    return -elbo.objective.mean()


# --------------------------------------------------------------------------- training objectives
Objective = Callable[..., ELBO]


def elbo_objective(beta: float = 1.0) -> Objective:
    """The VAE objective ``objective(model, x) -> ELBO``: `vae_elbo` with one reparameterized sample.

    x: [B, C, H, W]. The returned ELBO's fields are [B]; ``objective = reconstruction - beta * kl``
    (beta = 1: the ELBO; beta > 1: a beta-VAE). Training maximizes ``objective.mean()``, i.e. minimizes
    ``-objective(model, x).objective.mean()`` (nats per example).
    """
    beta = _check_real("beta", beta, minimum=0.0)

    def objective(model, x: Tensor) -> ELBO:
        return vae_elbo(model, x, beta=beta)

    objective.__qualname__ = f"elbo_objective(beta={beta:g})"
    return objective


def iw_objective(k: int) -> Objective:
    """The importance-weighted (IWAE) objective with K samples, ``objective(model, x) -> ELBO``.

    x: [B, C, H, W]; K reparameterized z_k ~ q(z|x) per example. The fields, each [B]:
      * ``objective``: the K-sample bound log (1/K) sum_k p(x, z_k) / q(z_k|x) (Burda et al., 2016),
        the quantity IWAE training maximizes; K = 1 is the single-sample ELBO, and it rises toward
        log p(x) as K grows;
      * ``reconstruction``: E_q log p(x|z) estimated as the MEAN of log p(x|z_k) over the same K
        samples (summed over pixels);
      * ``kl``: the closed-form KL(q(z|x) || p(z)) (summed over latent dimensions).
    So ``elbo`` (= reconstruction - kl) is the K-sample ELBO estimate (<= ``objective`` on average),
    reported next to the bound. The training loss is ``-objective(model, x).objective.mean()``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"iw_objective: k (importance samples) must be an int >= 1, got {k!r}.")

    def objective(model, x: Tensor) -> ELBO:
        mu, logvar = model.encode(x)  # [B, d] each
        z = model.reparameterize(mu, logvar, n_samples=k)  # [K, B, d]
        log_px_given_z = model.log_likelihood(x, model.decode(z))  # [K, B]
        log_w = log_px_given_z + log_standard_normal(z) - log_normal_diag(z, mu, logvar)  # [K, B]
        bound = torch.logsumexp(log_w, dim=0) - math.log(k)  # [B]
        return ELBO(bound, log_px_given_z.mean(0), gaussian_kl(mu, logvar))

    objective.__qualname__ = f"iw_objective(k={k})"
    return objective


def _check_real(name: str, value, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}.")
    return float(value)


# --------------------------------------------------------------------------- generic estimators
def standard_normal(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """N(0, 1) noise of `shape` with like's dtype and device.

    A generator on another device (e.g. the CPU generator from `seed_everything` with a CUDA
    model) draws on its own device and the noise is moved, so CPU and GPU runs see the same noise.
    """
    if generator is None or generator.device == like.device:
        return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
    noise = torch.randn(shape, generator=generator, dtype=like.dtype, device=generator.device)
    return noise.to(like.device)



def reparameterize(
    mu: Tensor, logvar: Tensor, n_samples: int | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """z = mu + exp(logvar / 2) * eps with eps ~ N(0, I): a sample of q = N(mu, diag exp(logvar)).

    mu, logvar: [B, d] -> z: [B, d], or [S, B, d] with n_samples = S. Differentiable in mu and logvar.
    A CPU generator also works for tensors on a GPU (see `standard_normal`).
    """
    shape = mu.shape if n_samples is None else (n_samples, *mu.shape)
    return mu + torch.exp(0.5 * logvar) * standard_normal(shape, mu, generator)


def _log_importance_weights(
    log_joint: LogJoint, x: Tensor, mu: Tensor, logvar: Tensor, n: int, generator
) -> Tensor:
    """log p(x, z) - log q(z|x) for n reparameterized z ~ q: [n, B]."""
    z = reparameterize(mu, logvar, n, generator)  # [n, B, d]
    return log_joint(x, z) - log_normal_diag(z, mu, logvar)


def elbo_monte_carlo(
    log_joint: LogJoint,
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Monte Carlo ELBO E_q[log p(x, z) - log q(z|x)] for q = N(mu, diag exp(logvar)). Maximize.

    log_joint(x, z: [S, B, d]) -> [S, B]; x: [B, ...]; mu, logvar: [B, d].
    Returns [B]: the MEAN over `n_samples` reparameterized samples (differentiable in mu, logvar).
    With the same generator state it uses the same samples as `importance_weighted_bound` with
    k = n_samples = 1, and then the two agree exactly.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    return _log_importance_weights(log_joint, x, mu, logvar, n_samples, generator).mean(0)


def importance_weighted_bound(
    log_joint: LogJoint,
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    k: int,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Importance-weighted bound log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q. Maximize; <= log p(x).

    log_joint(x, z: [S, B, d]) -> [S, B]; x: [B, ...]; q = N(mu, diag exp(logvar)), mu, logvar: [B, d].
    Returns [B] in nats. K = 1 is the single-sample ELBO estimate; as K grows the bound rises
    toward log p(x), so with large K (e.g. 5000) it is the standard log-likelihood estimate.

    Computed in log-space: the K samples are drawn `chunk_size` at a time (None: all at once),
    each chunk is reduced with logsumexp and the chunk results are combined with a running
    logaddexp, so memory is O(chunk_size * B * d) whatever K is. Differentiable (the IWAE
    objective); wrap the call in torch.no_grad() when only evaluating.
    """
    if k < 1:
        raise ValueError(f"k (the number of importance samples) must be >= 1, got {k}")
    if chunk_size is None:
        chunk_size = k
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    total = None
    for start in range(0, k, chunk_size):
        n = min(chunk_size, k - start)
        log_w = _log_importance_weights(log_joint, x, mu, logvar, n, generator)  # [n, B]
        chunk = torch.logsumexp(log_w, dim=0)  # [B]
        total = chunk if total is None else torch.logaddexp(total, chunk)
    return total - math.log(k)


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """Effective sample size (sum_s w_s)^2 / sum_s w_s^2 of importance weights, in [1, S].

    log_weights: [S, B] (unnormalized log w = log p(x, z) - log q(z|x)) -> [B]. Computed in
    log-space, so weights that would under/overflow in exp are fine.
    """
    return torch.exp(2.0 * torch.logsumexp(log_weights, 0) - torch.logsumexp(2.0 * log_weights, 0))
