"""Objectives for latent-variable models: log-densities, KL terms, the ELBO and the IW bound.

Pure functions on tensors. Conventions (all values in nats):

* per-example quantities are SUMMED over data and latent dimensions and returned with shape [B]
  (or [S, B] / [..., B] when leading sample dimensions are present);
* the ELBO is maximized; the training loss is the NEGATIVE ELBO, MEAN over the batch;
* a Gaussian is parameterized by its mean `mu` and log-variance `logvar` (diagonal covariance).

A model is anything with the protocol of ``vu.VAE`` (``FlowVAE`` and ``ConditionalVAE`` follow it too):
``posterior(x, y=None)`` (q_φ(z|x), a distribution with ``rsample``, ``log_prob`` and ``kl_to_prior``),
``decoder_output(z, y=None)``, ``log_likelihood(x, decoded)`` and ``log_joint(x, z, y=None)``.
A batch is images ``x: [B, C, H, W]``, or an ``(x, y)`` pair with labels ``y: [B]`` for a conditional model.
The estimators on explicit Gaussians (``elbo_monte_carlo``, ``importance_weighted_bound``) need only
``log_joint(x: [B, ...], z: [S, B, d]) -> [S, B]``, so the toy models work with them too.

Nothing here checks its inputs (``vae_elbo`` does, then calls ``estimate_elbo``): the training and
evaluation loops call these on batches that are valid by construction, without a host sync.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .validation import check_int, check_model_inputs, check_real

__all__ = [
    "log_normal_diag", "log_standard_normal", "gaussian_kl", "gaussian_kl_per_dim", "monte_carlo_kl",
    "bernoulli_log_likelihood", "gaussian_log_likelihood", "ELBO", "elbo_terms", "GaussianPosterior",
    "split_batch", "estimate_elbo", "vae_elbo", "negative_elbo_loss", "reparameterize", "standard_normal",
    "elbo_objective", "iw_objective", "iw_bound", "elbo_monte_carlo", "importance_weighted_bound",
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


# --------------------------------------------------------------------------- the ELBO
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


def standard_normal(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """N(0, 1) noise of `shape` with like's dtype and device.

    A generator on another device (e.g. the CPU generator from `seed_everything` with a CUDA
    model) draws on its own device and the noise is moved, so CPU and GPU runs see the same noise.
    """
    if generator is None or generator.device == like.device:
        return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=generator.device).to(like.device)


def reparameterize(mu: Tensor, logvar: Tensor, n_samples: int | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    """z = mu + exp(logvar / 2) * eps with eps ~ N(0, I): a sample of q = N(mu, diag exp(logvar)).

    mu, logvar: [B, d] -> z: [B, d], or [S, B, d] with n_samples = S. Differentiable in mu and logvar.
    A CPU generator also works for tensors on a GPU (see `standard_normal`).
    """
    shape = mu.shape if n_samples is None else (n_samples, *mu.shape)
    return mu + torch.exp(0.5 * logvar) * standard_normal(shape, mu, generator)


class GaussianPosterior(NamedTuple):
    """q = N(mu, diag exp(logvar)) with mu, logvar: [B, d]; what ``VAE.posterior`` returns. Like every
    posterior of the library it has ``rsample``, ``log_prob`` and ``kl_to_prior``."""

    mu: Tensor
    logvar: Tensor

    def rsample(self, n_samples: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterized samples: z [B, d], or [S, B, d] with n_samples = S."""
        return reparameterize(self.mu, self.logvar, n_samples, generator)

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z), summed over the latent dimensions: z [..., B, d] -> [..., B]."""
        return log_normal_diag(z, self.mu, self.logvar)

    def kl_to_prior(self) -> Tensor:
        """KL(q || N(0, I)) in closed form, summed over the latent dimensions: [B]."""
        return gaussian_kl(self.mu, self.logvar)


def split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    """A batch as (x, y): images x alone (y None), or a conditional model's (x, y) pair."""
    return (batch, None) if isinstance(batch, Tensor) else (batch[0], batch[1])


def estimate_elbo(model, x: Tensor, y: Tensor | None = None, beta: float = 1.0, n_samples: int = 1,
                  analytic_kl: bool = True, generator: torch.Generator | None = None) -> ELBO:
    """Reparameterized Monte Carlo estimate of the ELBO for each example (maximize it); no input checks.

    x: [B, C, H, W] (y: [B] labels for a conditional model). reconstruction = E_q[log p(x|z)], the MEAN
    over ``n_samples`` z ~ q(z|x), summed over pixels; kl = KL(q(z|x) || p(z)) in closed form where q has
    one (``analytic_kl=True``: lower variance) and otherwise the Monte Carlo estimate on the same samples.
    Returns ELBO with fields [B]; objective = reconstruction - beta * kl. Gradients reach both networks.
    """
    q = model.posterior(x, y)
    z = q.rsample(n_samples, generator)  # [S, B, d]
    reconstruction = model.log_likelihood(x, model.decoder_output(z, y)).mean(0)  # [S, B] -> [B]
    kl = q.kl_to_prior() if analytic_kl else None
    if kl is None:  # asked for, or a flow posterior, which has no closed form
        kl = (q.log_prob(z) - log_standard_normal(z)).mean(0)
    return elbo_terms(reconstruction, kl, beta)


def vae_elbo(model, x: Tensor, beta: float = 1.0, n_samples: int = 1, analytic_kl: bool = True,
             generator: torch.Generator | None = None, y: Any = None) -> ELBO:
    """``estimate_elbo`` for images you pass in: x is checked first (a tensor of the model's image shape,
    dtype and device, values in [0, 1]; one host sync), and so are the labels y of a conditional model.

    model: a ``vu.VAE``, ``FlowVAE`` or ``ConditionalVAE``. x: [B, C, H, W]. Returns ELBO with fields [B]:
    reconstruction (mean over ``n_samples`` z ~ q(z|x), summed over pixels), kl, and objective =
    reconstruction - beta * kl. The training loss is ``negative_elbo_loss(vae_elbo(...))``.
    """
    y = check_model_inputs(model, x, y, "vae_elbo")
    check_int("vae_elbo", "n_samples", n_samples, 1)
    return estimate_elbo(model, x, y, beta, n_samples, analytic_kl, generator)


def negative_elbo_loss(elbo: ELBO) -> Tensor:
    """The training loss: -elbo.objective MEAN over the batch (a scalar, nats per example; minimize)."""
    return -elbo.objective.mean()


# --------------------------------------------------------------------------- training objectives
Objective = Callable[[Any, Any], ELBO]


def elbo_objective(beta: float = 1.0) -> Objective:
    """The VAE objective ``objective(model, batch) -> ELBO``: ``estimate_elbo`` with one sample.

    batch: x [B, C, H, W], or (x, y). The fields are [B]; ``objective = reconstruction - beta * kl``
    (beta = 1: the ELBO; beta > 1: a beta-VAE). Training minimizes ``-objective(model, x).objective.mean()``
    (nats per example).
    """
    beta = check_real("elbo_objective", "beta", beta)

    def objective(model, batch) -> ELBO:
        return estimate_elbo(model, *split_batch(batch), beta=beta)

    objective.__qualname__ = f"elbo_objective(beta={beta:g})"
    return objective


def iw_objective(k: int) -> Objective:
    """The importance-weighted (IWAE) objective with K samples, ``objective(model, batch) -> ELBO``.

    batch: x [B, C, H, W], or (x, y); K reparameterized z_k ~ q(z|x) per example. The fields, each [B]:
      * ``objective``: the K-sample bound log (1/K) sum_k p(x, z_k) / q(z_k|x) (Burda et al., 2016),
        the quantity IWAE training maximizes; K = 1 is the single-sample ELBO, and it rises toward
        log p(x) as K grows;
      * ``reconstruction``: E_q log p(x|z) estimated as the MEAN of log p(x|z_k) over the same K samples;
      * ``kl``: KL(q(z|x) || p(z)), in closed form where q has one (else on the same samples).
    So ``elbo`` (= reconstruction - kl) is the K-sample ELBO estimate (<= ``objective`` on average),
    reported next to the bound. The training loss is ``-objective(model, x).objective.mean()``.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"iw_objective: k (importance samples) must be an int >= 1, got {k!r}.")

    def objective(model, batch) -> ELBO:
        x, y = split_batch(batch)
        q = model.posterior(x, y)
        z = q.rsample(k)  # [K, B, d]
        log_px_given_z = model.log_likelihood(x, model.decoder_output(z, y))  # [K, B]
        log_w = log_px_given_z + log_standard_normal(z) - q.log_prob(z)  # [K, B]
        bound, reconstruction = torch.logsumexp(log_w, dim=0) - math.log(k), log_px_given_z.mean(0)
        kl = q.kl_to_prior()
        return ELBO(bound, reconstruction, (q.log_prob(z) - log_standard_normal(z)).mean(0) if kl is None else kl)

    objective.__qualname__ = f"iw_objective(k={k})"
    return objective


# --------------------------------------------------------------------------- the importance-weighted bound
def iw_bound(log_p: Callable[[Tensor], Tensor], q, k: int, chunk_size: int | None = None,
             generator: torch.Generator | None = None) -> Tensor:
    """log (1/K) sum_k p(x, z_k) / q(z_k), z_k ~ q: the one importance-weighted loop of the library.

    log_p(z: [S, B, d]) -> [S, B], the log joint at x; q: a posterior (``rsample``, ``log_prob``). Returns
    [B] in nats. The K samples are drawn ``chunk_size`` at a time (None: all at once), each chunk reduced
    with logsumexp and the chunks combined with a running logaddexp: memory O(chunk_size * B * d) for any K.
    """
    chunk_size = k if chunk_size is None else chunk_size
    total = None
    for start in range(0, k, chunk_size):
        z = q.rsample(min(chunk_size, k - start), generator)  # [n, B, d]
        chunk = torch.logsumexp(log_p(z) - q.log_prob(z), dim=0)  # [B]
        total = chunk if total is None else torch.logaddexp(total, chunk)
    return total - math.log(k)


def elbo_monte_carlo(log_joint: Callable[[Tensor, Tensor], Tensor], x: Tensor, mu: Tensor, logvar: Tensor,
                     n_samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Monte Carlo ELBO E_q[log p(x, z) - log q(z|x)] for q = N(mu, diag exp(logvar)). Maximize.

    log_joint(x, z: [S, B, d]) -> [S, B]; x: [B, ...]; mu, logvar: [B, d]. Returns [B]: the MEAN over
    ``n_samples`` reparameterized samples (differentiable in mu, logvar). With the same generator state it
    uses the same samples as ``importance_weighted_bound`` with k = n_samples = 1, and then the two agree.
    """
    check_int("elbo_monte_carlo", "n_samples", n_samples, 1)
    q = GaussianPosterior(mu, logvar)
    z = q.rsample(n_samples, generator)
    return (log_joint(x, z) - q.log_prob(z)).mean(0)


def importance_weighted_bound(log_joint: Callable[[Tensor, Tensor], Tensor], x: Tensor, mu: Tensor,
                              logvar: Tensor, k: int, chunk_size: int | None = None,
                              generator: torch.Generator | None = None) -> Tensor:
    """Importance-weighted bound log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q. Maximize; <= log p(x).

    log_joint(x, z: [S, B, d]) -> [S, B]; x: [B, ...]; q = N(mu, diag exp(logvar)), mu, logvar: [B, d].
    Returns [B] in nats. K = 1 is the single-sample ELBO estimate; as K grows the bound rises toward
    log p(x), so with large K (e.g. 5000) it is the standard log-likelihood estimate. Chunked as
    ``iw_bound``. Differentiable (the IWAE objective); wrap the call in torch.no_grad() when evaluating.
    """
    check_int("importance_weighted_bound", "k", k, 1)
    if chunk_size is not None:
        check_int("importance_weighted_bound", "chunk_size", chunk_size, 1)
    return iw_bound(lambda z: log_joint(x, z), GaussianPosterior(mu, logvar), k, chunk_size, generator)


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """Effective sample size (sum_k w_k)^2 / sum_k w_k^2 of importance weights, in [1, K].

    log_weights: [K, B] (unnormalized log w = log p(x, z) - log q(z|x)) -> [B]. Computed in
    log-space, so weights that would under/overflow in exp are fine.
    """
    return torch.exp(2.0 * torch.logsumexp(log_weights, 0) - torch.logsumexp(2.0 * log_weights, 0))
