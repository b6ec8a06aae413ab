"""Two Monte Carlo estimators of the gradient of an expectation under a Gaussian.

We want  grad_(mu, log sigma) E_{z ~ q}[f(z)]  with  q = N(mu, diag(sigma^2)),  the gradient the encoder of a
VAE needs. The sample z depends on (mu, sigma), so autograd through one drawn z is not enough by itself:

* score function (REINFORCE, Williams 1992):  grad E_q[f] = E_q[(f(z) - b) grad log q(z)],
  with grad_mu log q = eps / sigma and grad_(log sigma) log q = eps^2 - 1, where eps = (z - mu) / sigma.
  Needs only values of f; b is an optional constant baseline (it leaves the estimator unbiased).
* reparameterization (Kingma & Welling 2013):  z = mu + sigma * eps, eps ~ N(0, I), so
  grad E_q[f] = E_eps[grad_z f(z) * dz/d(mu, log sigma)] = E_eps[(grad_z f, grad_z f * sigma * eps)].
  Needs f differentiable in z.

Both return one gradient estimate PER SAMPLE, so the mean (the estimate) and the variance (its quality) can be
compared. `quadratic_objective` has an exact gradient for checking.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .objectives import _standard_normal

__all__ = [
    "GradientSamples",
    "score_function_gradient",
    "reparameterization_gradient",
    "quadratic_objective",
    "quadratic_objective_gradient",
]

Objective = Callable[[Tensor], Tensor]  # f: z [S, ..., d] -> [S, ...], acting on each sample independently


class GradientSamples(NamedTuple):
    """Per-sample gradient estimates: mu: [S, ..., d], log_sigma: [S, ..., d] (S samples along dim 0)."""

    mu: Tensor
    log_sigma: Tensor

    def mean(self) -> "GradientSamples":
        """The Monte Carlo estimate: average over samples -> ([..., d], [..., d])."""
        return GradientSamples(self.mu.mean(0), self.log_sigma.mean(0))

    def variance(self) -> "GradientSamples":
        """Per-sample variance (of ONE sample's estimate) -> ([..., d], [..., d]); divide by S for the mean's."""
        return GradientSamples(self.mu.var(0), self.log_sigma.var(0))

    def standard_error(self) -> "GradientSamples":
        """Standard error of the mean estimate: sqrt(variance / S) -> ([..., d], [..., d])."""
        n = self.mu.shape[0]
        return GradientSamples((self.mu.var(0) / n).sqrt(), (self.log_sigma.var(0) / n).sqrt())


def _draw_noise(mu: Tensor, log_sigma: Tensor, n_samples: int, generator: torch.Generator | None) -> Tensor:
    if mu.shape != log_sigma.shape:
        raise ValueError(f"mu and log_sigma must have the same shape, got {tuple(mu.shape)} and {tuple(log_sigma.shape)}")
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 to measure a variance, got {n_samples}")
    return _standard_normal((n_samples, *mu.shape), mu, generator)  # a CPU generator works for GPU tensors


def score_function_gradient(
    f: Objective,
    mu: Tensor,
    log_sigma: Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
    baseline: float | Tensor = 0.0,
) -> GradientSamples:
    """Score-function (REINFORCE) estimates of grad_(mu, log sigma) E_{N(mu, sigma^2)}[f(z)], one per sample.

    f: z [S, ..., d] -> [S, ...] (values only; no gradient of f is used).
    mu, log_sigma: [..., d] (e.g. [d] or [B, d]); sigma = exp(log_sigma) is the standard deviation.
    baseline: a constant b (scalar or broadcastable to [...]) subtracted from f; any b keeps it unbiased
        because E_q[grad log q] = 0, and a b near E_q[f] lowers the variance.
    Returns GradientSamples(mu [S, ..., d], log_sigma [S, ..., d]).
    """
    mu, log_sigma = mu.detach(), log_sigma.detach()
    eps = _draw_noise(mu, log_sigma, n_samples, generator)
    sigma = log_sigma.exp()
    with torch.no_grad():
        centred = (f(mu + sigma * eps) - baseline)[..., None]  # [S, ..., 1]
    return GradientSamples(centred * eps / sigma, centred * (eps**2 - 1.0))


def reparameterization_gradient(
    f: Objective,
    mu: Tensor,
    log_sigma: Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
) -> GradientSamples:
    """Reparameterized (pathwise) estimates of grad_(mu, log sigma) E_{N(mu, sigma^2)}[f(z)], one per sample.

    z = mu + sigma * eps, eps ~ N(0, I). f: z [S, ..., d] -> [S, ...], differentiable, acting on each sample
    independently (so grad of sum_s f(z_s) w.r.t. z gives every sample's own gradient in one backward pass).
    mu, log_sigma: [..., d]. Returns GradientSamples(mu [S, ..., d], log_sigma [S, ..., d]).
    """
    mu, log_sigma = mu.detach(), log_sigma.detach()
    eps = _draw_noise(mu, log_sigma, n_samples, generator)
    sigma = log_sigma.exp()
    with torch.enable_grad():
        z = (mu + sigma * eps).requires_grad_(True)
        (grad_z,) = torch.autograd.grad(f(z).sum(), z)
    # chain rule: dz/dmu = 1, dz/d(log sigma) = sigma * eps
    return GradientSamples(grad_z, grad_z * sigma * eps)


def quadratic_objective(target: Tensor) -> Objective:
    """f(z) = -1/2 ||z - target||^2, summed over the last dim. target: [..., d]; f: [S, ..., d] -> [S, ...]."""
    return lambda z: -0.5 * ((z - target) ** 2).sum(-1)


def quadratic_objective_gradient(mu: Tensor, log_sigma: Tensor, target: Tensor) -> GradientSamples:
    """Exact gradient of E_{N(mu, sigma^2)}[-1/2 ||z - target||^2] = -1/2 (||mu - target||^2 + sum sigma^2).

    d/dmu = target - mu,  d/d(log sigma) = -sigma^2.  All [..., d]; returned without a sample dim.
    """
    return GradientSamples(target - mu, -torch.exp(2 * log_sigma))
