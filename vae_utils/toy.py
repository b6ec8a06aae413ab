"""Toy latent-variable models whose log p(x) and posterior p(z|x) are known exactly.

Both models share the prior p(z) = N(0, I_d) and a Gaussian decoder p(x|z) = N(x; f(z), s^2 I_D), and the
interface of the contract (the same as `vae_utils.VAE`: log_likelihood takes the decoder's OUTPUT, not z):

    decode(z: [..., d]) -> [..., D]                   f(z), the mean of p(x|z)
    log_likelihood(x: [B, D], decoded: [S, B, D]) -> [S, B]
                                                      log p(x|z) for decoded = decode(z), summed over D
    log_joint(x: [B, D], z: [S, B, d]) -> [S, B]      log_likelihood(x, decode(z)) + log p(z)
    log_marginal(x: [B, D]) -> [B]                    log p(x), exact
    log_posterior(x: [B, D], z: [S, B, d]) -> [S, B]  log p(z|x), exact
    posterior_moments(x: [B, D]) -> (mean [B, d], var [B, d])
    elbo(x, mu, logvar) -> [B]                        E_q[log p(x, z) - log q(z|x)], exact (no sampling)
    sample(n, generator) -> (x [n, D], z [n, d])

`LinearGaussianModel` (f(z) = W z + b) has everything in closed form. `NonlinearGaussianModel` (any f, with a
1-D or 2-D latent) gets p(x) by quadrature on a grid; tests check that grid against the closed form.
Everything is float64: quadrature adds up many tiny terms, and printed 4-decimal results must not wobble.
Units: nats.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from vae_utils.objectives import log_normal_diag, log_standard_normal

__all__ = [
    "LinearGaussianModel",
    "NonlinearGaussianModel",
    "LatentGrid",
    "curve_decoder",
    "gaussian_kl_between",
]

DTYPE = torch.float64
_LOG_2PI = math.log(2 * math.pi)


def _log_normal_isotropic(x: Tensor, mean: Tensor, std: float) -> Tensor:
    """log N(x; mean, std^2 I) summed over the last dim. x, mean broadcastable [..., D] -> [...]."""
    return log_normal_diag(x, mean, 2.0 * math.log(std))


def _check_x(x: Tensor, data_dim: int) -> Tensor:
    if x.dim() != 2 or x.shape[-1] != data_dim:
        raise ValueError(
            f"x must have shape [B, {data_dim}] (a batch of data vectors), got {tuple(x.shape)}; "
            f"for a single point use x.reshape(1, {data_dim})"
        )
    return x.to(DTYPE)


def _check_z(z: Tensor, batch: int, latent_dim: int) -> Tensor:
    if z.dim() != 3 or z.shape[-1] != latent_dim or z.shape[1] not in (1, batch):
        raise ValueError(
            f"z must have shape [S, B, {latent_dim}] with B = {batch} (S samples per data point), "
            f"got {tuple(z.shape)}; for one sample per point use z.unsqueeze(0)"
        )
    return z.to(DTYPE)


def _check_decoded(decoded: Tensor, batch: int, data_dim: int, latent_dim: int) -> Tensor:
    if decoded.dim() != 3 or decoded.shape[-1] != data_dim or decoded.shape[1] not in (1, batch):
        if decoded.shape[-1:] == (latent_dim,) and latent_dim != data_dim:
            hint = (f"; its last dimension is {latent_dim}, the latent size, so this looks like a code z: "
                    f"log_likelihood takes the decoder's output, pass model.decode(z) instead "
                    f"(or call log_joint(x, z) for log p(x, z))")
        else:
            hint = (f"; build it as model.decode(z) from codes z: [S, B, {latent_dim}] "
                    f"(for one sample per point, add the S dimension with .unsqueeze(0))")
        raise ValueError(
            f"decoded must have shape [S, B, {data_dim}] with B = {batch} (the decoder's output f(z) for S codes "
            f"per data point), got {tuple(decoded.shape)}{hint}"
        )
    return decoded.to(DTYPE)


def gaussian_kl_between(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(mu_q, diag exp(logvar_q)) || N(mu_p, diag exp(logvar_p))) in closed form, summed over the last dim. >= 0.

    Takes LOG-variances, like `vae_utils.objectives.gaussian_kl` (which is the case mu_p = 0, logvar_p = 0).
    All arguments broadcastable [..., d] -> [...]. Per dimension, with v = exp(logvar):
        KL = 0.5 * (v_q / v_p + (mu_q - mu_p)^2 / v_p - 1 + logvar_p - logvar_q).
    Used to check gap = KL(q || exact posterior): pass the posterior's variance as its log, `var.log()`.
    """
    mu_q, logvar_q, mu_p, logvar_p = (torch.as_tensor(t) for t in (mu_q, logvar_q, mu_p, logvar_p))
    inverse_var_p = torch.exp(-logvar_p)
    terms = torch.exp(logvar_q) * inverse_var_p + (mu_q - mu_p) ** 2 * inverse_var_p - 1.0 + logvar_p - logvar_q
    return 0.5 * terms.sum(-1)


class _GaussianNoiseModel:
    """What both toy models share: p(z) = N(0, I_d), p(x|z) = N(x; f(z), s^2 I_D), with f = `decode`.

    Subclasses set `data_dim`, `latent_dim`, `noise_std` and define `decode(z: [..., d]) -> [..., D]`.
    As for `vae_utils.VAE`, `log_likelihood` takes the decoder's output and `log_joint` takes the code z.
    """

    data_dim: int
    latent_dim: int
    noise_std: float

    def decode(self, z: Tensor) -> Tensor:
        """f(z), the mean of p(x|z). z: [..., d] -> [..., D]."""
        raise NotImplementedError

    def log_likelihood(self, x: Tensor, decoded: Tensor) -> Tensor:
        """log p(x|z) = log N(x; f(z), s^2 I) from the decoder's output decoded = decode(z).

        x: [B, D], decoded: [S, B, D] -> [S, B]. Takes f(z), not z, like `vae_utils.VAE.log_likelihood`.
        """
        x = _check_x(x, self.data_dim)
        decoded = _check_decoded(decoded, x.shape[0], self.data_dim, self.latent_dim)
        return _log_normal_isotropic(x, decoded, self.noise_std)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x, z) = log p(x|z) + log p(z). x: [B, D], z: [S, B, d] -> [S, B]."""
        x = _check_x(x, self.data_dim)
        z = _check_z(z, x.shape[0], self.latent_dim)
        return self.log_likelihood(x, self.decode(z)) + log_standard_normal(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Ancestral sampling: z ~ p(z), x ~ p(x|z). Returns (x [n, D], z [n, d])."""
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=DTYPE)
        noise = torch.randn(n, self.data_dim, generator=generator, dtype=DTYPE)
        return self.decode(z) + self.noise_std * noise, z


class LinearGaussianModel(_GaussianNoiseModel):
    """p(z) = N(0, I_d),  p(x|z) = N(x; W z + b, s^2 I_D): probabilistic PCA, exact in closed form.

    weight: [D, d], bias: [D], noise_std: s > 0.
      p(x)   = N(x; b, W W^T + s^2 I)
      p(z|x) = N(z; m(x), C) with C = (I + W^T W / s^2)^{-1}, m(x) = C W^T (x - b) / s^2.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, noise_std: float = 0.5):
        weight = torch.as_tensor(weight, dtype=DTYPE)
        if weight.dim() != 2:
            raise ValueError(f"weight must be a [D, d] matrix, got shape {tuple(weight.shape)}")
        if noise_std <= 0:
            raise ValueError(f"noise_std must be positive, got {noise_std}")
        self.weight = weight
        self.data_dim, self.latent_dim = weight.shape
        self.bias = torch.zeros(self.data_dim, dtype=DTYPE) if bias is None else torch.as_tensor(bias, dtype=DTYPE)
        if self.bias.shape != (self.data_dim,):
            raise ValueError(f"bias must have shape [{self.data_dim}], got {tuple(self.bias.shape)}")
        self.noise_std = float(noise_std)

    @classmethod
    def identity(cls, latent_dim: int, noise_std: float = 0.5) -> "LinearGaussianModel":
        """x = z + noise, D = d: every latent dimension is observed, so the posterior narrows in every one."""
        return cls(torch.eye(latent_dim, dtype=DTYPE), noise_std=noise_std)

    def decode(self, z: Tensor) -> Tensor:
        """f(z) = W z + b, the mean of p(x|z). z: [..., d] -> [..., D]."""
        return z.to(DTYPE) @ self.weight.T + self.bias

    def marginal_covariance(self) -> Tensor:
        """Cov[x] = W W^T + s^2 I: [D, D]."""
        return self.weight @ self.weight.T + self.noise_std**2 * torch.eye(self.data_dim, dtype=DTYPE)

    def log_marginal(self, x: Tensor) -> Tensor:
        """Exact log p(x) = log N(x; b, W W^T + s^2 I). x: [B, D] -> [B]."""
        x = _check_x(x, self.data_dim)
        dist = torch.distributions.MultivariateNormal(self.bias, covariance_matrix=self.marginal_covariance())
        return dist.log_prob(x)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Exact posterior p(z|x) = N(mean, cov). x: [B, D] -> (mean [B, d], cov [d, d]; cov is shared by all x)."""
        x = _check_x(x, self.data_dim)
        precision = torch.eye(self.latent_dim, dtype=DTYPE) + self.weight.T @ self.weight / self.noise_std**2
        cov = torch.linalg.inv(precision)
        mean = (x - self.bias) @ self.weight @ cov.T / self.noise_std**2
        return mean, cov

    def posterior_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean [B, d] and marginal variances [B, d] (the diagonal of the covariance)."""
        mean, cov = self.posterior(x)
        return mean, torch.diagonal(cov).expand_as(mean).clone()

    def log_posterior(self, x: Tensor, z: Tensor) -> Tensor:
        """Exact log p(z|x). x: [B, D], z: [S, B, d] -> [S, B]."""
        mean, cov = self.posterior(x)
        z = _check_z(z, x.shape[0], self.latent_dim)
        return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(z)

    def elbo(self, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """Exact ELBO for q(z|x) = N(mu, diag exp(logvar)), no sampling. x: [B, D], mu/logvar: [B, d] -> [B].

        E_q[log p(x|z)] = log N(x; W mu + b, s^2 I) - tr(W diag(var) W^T) / (2 s^2)   (Gaussian integral)
        E_q[log p(z)]   = log N(mu; 0, I) - sum(var) / 2
        H[q]            = sum(1 + log 2 pi + logvar) / 2
        """
        x = _check_x(x, self.data_dim)
        mu, logvar = mu.to(DTYPE), logvar.to(DTYPE)
        var = logvar.exp()
        expected_loglik = _log_normal_isotropic(x, self.decode(mu), self.noise_std) - (
            var @ (self.weight**2).sum(0)
        ) / (2 * self.noise_std**2)
        expected_logprior = log_standard_normal(mu) - 0.5 * var.sum(-1)
        entropy = 0.5 * (1.0 + _LOG_2PI + logvar).sum(-1)
        return expected_loglik + expected_logprior + entropy


class LatentGrid:
    """A regular grid over [-limit, limit]^d for quadrature in a 1-D or 2-D latent space.

    points: [G, d] with G = n^d; log_cell: log of the cell volume h^d. For integrands that decay like a
    Gaussian before the edge, the plain sum sum_g g(z_g) h^d (the trapezoid rule) converges exponentially
    fast in 1/h, so a few hundred points per dimension give ~1e-10 relative accuracy.
    """

    def __init__(self, latent_dim: int, limit: float = 7.0, points_per_dim: int | None = None):
        if latent_dim not in (1, 2):
            raise ValueError(f"quadrature grids support latent_dim 1 or 2, got {latent_dim}: use a Monte Carlo estimate")
        n = points_per_dim or (1401 if latent_dim == 1 else 201)
        axis = torch.linspace(-limit, limit, n, dtype=DTYPE)
        self.axis = axis
        self.step = float(axis[1] - axis[0])
        self.latent_dim = latent_dim
        if latent_dim == 1:
            self.points = axis[:, None]
        else:
            a, b = torch.meshgrid(axis, axis, indexing="ij")
            self.points = torch.stack([a.reshape(-1), b.reshape(-1)], dim=-1)
        self.log_cell = latent_dim * math.log(self.step)

    def __len__(self) -> int:
        return self.points.shape[0]


def curve_decoder(z: Tensor) -> Tensor:
    """The default nonlinear decoder mean f(z) = (z, z^2 - 1) per latent dimension.

    z: [..., d] -> [..., 2d]. x_2 = z^2 - 1 cannot tell z from -z, so the posterior can be bimodal:
    a single Gaussian q cannot match it and the ELBO keeps a gap.
    """
    return torch.cat([z, z**2 - 1.0], dim=-1)


class NonlinearGaussianModel(_GaussianNoiseModel):
    """p(z) = N(0, I_d) with d in {1, 2},  p(x|z) = N(x; f(z), s^2 I_D); exact p(x) and p(z|x) by quadrature.

    decoder: f, maps z [..., d] -> [..., D] (default `curve_decoder`, D = 2d). noise_std: s.
    grid: the quadrature grid (default LatentGrid(d)); its step must be well below the posterior's width
    (the default grids are fine for s >= 0.1).
    """

    def __init__(
        self,
        latent_dim: int = 1,
        noise_std: float = 0.5,
        decoder: Callable[[Tensor], Tensor] = curve_decoder,
        grid: LatentGrid | None = None,
    ):
        if noise_std <= 0:
            raise ValueError(f"noise_std must be positive, got {noise_std}")
        self.latent_dim = latent_dim
        self.noise_std = float(noise_std)
        self.decoder = decoder
        self.grid = grid or LatentGrid(latent_dim)
        if self.grid.latent_dim != latent_dim:
            raise ValueError(f"grid is {self.grid.latent_dim}-D but latent_dim is {latent_dim}")
        self.data_dim = decoder(torch.zeros(1, latent_dim, dtype=DTYPE)).shape[-1]

    def decode(self, z: Tensor) -> Tensor:
        """f(z), the mean of p(x|z). z: [..., d] -> [..., D]."""
        return self.decoder(z.to(DTYPE))

    def log_joint_on_grid(self, x: Tensor) -> Tensor:
        """log p(x, z_g) at every grid point. x: [B, D] -> [G, B]."""
        x = _check_x(x, self.data_dim)
        z = self.grid.points[:, None, :].expand(-1, x.shape[0], -1)
        return self.log_joint(x, z)

    def log_marginal(self, x: Tensor) -> Tensor:
        """log p(x) = log sum_g p(x, z_g) h^d (quadrature, in log space). x: [B, D] -> [B]."""
        return torch.logsumexp(self.log_joint_on_grid(x), dim=0) + self.grid.log_cell

    def log_posterior(self, x: Tensor, z: Tensor) -> Tensor:
        """Exact log p(z|x) = log p(x, z) - log p(x) at any z. x: [B, D], z: [S, B, d] -> [S, B]."""
        return self.log_joint(x, z) - self.log_marginal(x)

    def posterior_on_grid(self, x: Tensor) -> Tensor:
        """Posterior density p(z_g|x) at the grid points (sums to 1 / h^d). x: [B, D] -> [G, B]."""
        log_joint = self.log_joint_on_grid(x)
        return torch.exp(log_joint - torch.logsumexp(log_joint, dim=0) - self.grid.log_cell)

    def posterior_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and variance per latent dim, by quadrature. x: [B, D] -> (mean [B, d], var [B, d])."""
        weights = self.posterior_on_grid(x) * math.exp(self.grid.log_cell)  # [G, B], sums to 1 over G
        z = self.grid.points[:, None, :]  # [G, 1, d]
        mean = (weights[..., None] * z).sum(0)
        var = (weights[..., None] * (z - mean) ** 2).sum(0)
        return mean, var

    def elbo(self, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """Exact ELBO for q(z|x) = N(mu, diag exp(logvar)) by quadrature (no sampling): x: [B, D], mu/logvar: [B, d] -> [B].

        sum_g q(z_g) [log p(x, z_g) - log q(z_g)] h^d. Accurate while q's std is several grid steps wide.
        """
        mu, logvar = mu.to(DTYPE), logvar.to(DTYPE)
        z = self.grid.points[:, None, :]
        log_q = log_normal_diag(z, mu, logvar)  # [G, B]
        integrand = torch.exp(log_q) * (self.log_joint_on_grid(x) - log_q)
        return integrand.sum(0) * math.exp(self.grid.log_cell)

    def kl_to_posterior(self, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """KL(q(z|x) || p(z|x)) by quadrature for q = N(mu, diag exp(logvar)). -> [B]."""
        mu, logvar = mu.to(DTYPE), logvar.to(DTYPE)
        z = self.grid.points[:, None, :]
        log_q = log_normal_diag(z, mu, logvar)
        log_post = self.log_joint_on_grid(x) - self.log_marginal(x)  # [G, B]
        return (torch.exp(log_q) * (log_q - log_post)).sum(0) * math.exp(self.grid.log_cell)
