"""Two Monte Carlo estimators of the gradient of an expectation under a diagonal Gaussian.

We want  grad_(mu, logvar) E_{z ~ q}[f(z)]  with  q = N(mu, diag(sigma^2)),  logvar = log sigma^2,  the
gradient a VAE's encoder needs (the encoder outputs mu and logvar; the chain rule carries this gradient on to
its weights phi). The sample z depends on (mu, logvar), so autograd through one drawn z is not enough:

* score function (REINFORCE, Williams 1992):  grad E_q[f] = E_q[(f(z) - b) grad log q(z)],
  with grad_mu log q = eps / sigma and grad_logvar log q = (eps^2 - 1) / 2, where eps = (z - mu) / sigma.
  Needs only values of f; b is an optional constant baseline (it leaves the estimator unbiased because
  E_q[grad log q] = 0).
* reparameterization (Kingma & Welling 2013):  z = mu + sigma * eps, eps ~ N(0, I), sigma = exp(logvar / 2), so
  grad E_q[f] = E_eps[(grad_z f, grad_z f * sigma * eps / 2)].  Needs f differentiable in z.

Both return one gradient estimate PER SAMPLE, so the mean (the estimate) and the variance (its quality) can be
compared. `quadratic_objective` has an exact gradient for checking; `gaussian_score` is grad log q itself and
`optimal_baseline` the variance-minimizing constant b for the d/dmu score-function estimator.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .objectives import standard_normal

__all__ = [
    "GradientSamples",
    "gaussian_score",
    "score_function_gradient",
    "reparameterization_gradient",
    "optimal_baseline",
    "quadratic_objective",
    "quadratic_objective_gradient",
]

Objective = Callable[[Tensor], Tensor]  # f: z [S, ..., d] -> [S, ...], acting on each sample independently


class GradientSamples(NamedTuple):
    """Per-sample gradient estimates: mu: [S, ..., d], logvar: [S, ..., d] (S samples along dim 0)."""

    mu: Tensor
    logvar: Tensor

    def mean(self) -> "GradientSamples":
        """The Monte Carlo estimate: average over samples -> ([..., d], [..., d])."""
        return GradientSamples(self.mu.mean(0), self.logvar.mean(0))

    def variance(self) -> "GradientSamples":
        """Per-sample variance (of ONE sample's estimate) -> ([..., d], [..., d]); divide by S for the mean's."""
        return GradientSamples(self.mu.var(0), self.logvar.var(0))

    def standard_error(self) -> "GradientSamples":
        """Standard error of the mean estimate: sqrt(variance / S) -> ([..., d], [..., d])."""
        n = self.mu.shape[0]
        return GradientSamples((self.mu.var(0) / n).sqrt(), (self.logvar.var(0) / n).sqrt())


def _draw_noise(mu: Tensor, logvar: Tensor, n_samples: int, generator: torch.Generator | None) -> Tensor:
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must have the same shape, got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 to measure a variance, got {n_samples}")
    return standard_normal((n_samples, *mu.shape), mu, generator)  # a CPU generator works for GPU tensors


def gaussian_score(z: Tensor, mu: Tensor, logvar: Tensor) -> GradientSamples:
    """grad_(mu, logvar) log N(z; mu, diag exp(logvar)), per coordinate.

    z: [S, ..., d]; mu, logvar: [..., d]. With eps = (z - mu) / sigma:
    d/dmu = eps / sigma = (z - mu) / sigma^2,  d/dlogvar = (eps^2 - 1) / 2.  Returns ([S, ..., d], [S, ..., d]).
    """
    inv_var = torch.exp(-logvar)
    return GradientSamples((z - mu) * inv_var, 0.5 * ((z - mu) ** 2 * inv_var - 1.0))


def score_function_gradient(f: Objective, mu: Tensor, logvar: Tensor, n_samples: int,
                            generator: torch.Generator | None = None,
                            baseline: float | Tensor = 0.0) -> GradientSamples:
    """Score-function (REINFORCE) estimates of grad_(mu, logvar) E_{N(mu, diag exp(logvar))}[f(z)], one per sample.

    f: z [S, ..., d] -> [S, ...] (values only; no gradient of f is used).
    mu, logvar: [..., d] (e.g. [d] or [B, d]); logvar = log sigma^2.
    baseline: a constant b (scalar or broadcastable to [...]) subtracted from f; any b keeps it unbiased
        because E_q[grad log q] = 0, and a b near E_q[f] lowers the variance (see `optimal_baseline`).
    Returns GradientSamples(mu [S, ..., d], logvar [S, ..., d]).
    """
    mu, logvar = mu.detach(), logvar.detach()
    eps = _draw_noise(mu, logvar, n_samples, generator)
    z = mu + torch.exp(0.5 * logvar) * eps
    with torch.no_grad():
        centred = (f(z) - baseline)[..., None]  # [S, ..., 1]
    score = gaussian_score(z, mu, logvar)
    return GradientSamples(centred * score.mu, centred * score.logvar)


def reparameterization_gradient(f: Objective, mu: Tensor, logvar: Tensor, n_samples: int,
                                generator: torch.Generator | None = None) -> GradientSamples:
    """Reparameterized (pathwise) estimates of grad_(mu, logvar) E_{N(mu, diag exp(logvar))}[f(z)], one per sample.

    z = mu + sigma * eps, sigma = exp(logvar / 2), eps ~ N(0, I). f: z [S, ..., d] -> [S, ...], differentiable,
    acting on each sample independently (so grad of sum_s f(z_s) w.r.t. z gives every sample's own gradient in
    one backward pass). mu, logvar: [..., d]. Returns GradientSamples(mu [S, ..., d], logvar [S, ..., d]).
    """
    mu, logvar = mu.detach(), logvar.detach()
    eps = _draw_noise(mu, logvar, n_samples, generator)
    sigma = torch.exp(0.5 * logvar)
    with torch.enable_grad():
        z = (mu + sigma * eps).requires_grad_(True)
        (grad_z,) = torch.autograd.grad(f(z).sum(), z)
    # chain rule: dz/dmu = 1, dz/dlogvar = sigma * eps / 2
    return GradientSamples(grad_z, grad_z * sigma * eps * 0.5)


def optimal_baseline(f: Objective, mu: Tensor, logvar: Tensor, n_samples: int,
                     generator: torch.Generator | None = None) -> Tensor:
    """Monte Carlo estimate of the constant b minimizing the per-sample variance of the d/dmu score estimator.

    For coordinate j with score s_j = d/dmu_j log q:  b*_j = E_q[f s_j^2] / E_q[s_j^2].
    f: z [S, ..., d] -> [S, ...]; mu, logvar: [..., d]. Returns b*: [..., d].
    """
    mu, logvar = mu.detach(), logvar.detach()
    eps = _draw_noise(mu, logvar, n_samples, generator)
    z = mu + torch.exp(0.5 * logvar) * eps
    with torch.no_grad():
        values = f(z)[..., None]  # [S, ..., 1]
    s2 = gaussian_score(z, mu, logvar).mu ** 2
    return (values * s2).mean(0) / s2.mean(0)


def quadratic_objective(target: Tensor) -> Objective:
    """f(z) = -1/2 ||z - target||^2, summed over the last dim. target: [..., d]; f: [S, ..., d] -> [S, ...]."""
    return lambda z: -0.5 * ((z - target) ** 2).sum(-1)


def quadratic_objective_gradient(mu: Tensor, logvar: Tensor, target: Tensor) -> GradientSamples:
    """Exact gradient of E_{N(mu, diag exp(logvar))}[-1/2 ||z - target||^2] = -1/2 (||mu - target||^2 + sum sigma^2).

    d/dmu = target - mu,  d/dlogvar = -sigma^2 / 2.  All [..., d]; returned without a sample dim.
    """
    return GradientSamples(target - mu, -0.5 * torch.exp(logvar))
