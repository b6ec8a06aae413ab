"""Normalizing-flow posteriors: a Gaussian q_φ(z|x) followed by T invertible steps.

    z_0 = mu(x) + exp(logvar(x) / 2) * eps,   eps ~ N(0, I)        (the VAE's Gaussian encoder)
    z_t = f_t(z_{t-1}; h(x)),  t = 1..T                              (invertible steps)
    log q_φ(z_T|x) = log N(z_0; mu, diag exp(logvar)) - sum_t log |det d f_t / d z_{t-1}|

(the change-of-variables formula; Rezende & Mohamed, 2015). Two kinds of step:

* ``IAFStep`` (inverse autoregressive flow, Kingma et al., 2016): [m, a] = MADE(z, h), a gate
  g = sigmoid(a), z' = g * z + (1 - g) * m. Output j depends on z_<j only, so the Jacobian is
  triangular and log |det| = sum_j log g_j. The dimension order is reversed after
  each step so that every dimension eventually depends on every other.
* ``CouplingStep`` (affine coupling, Dinh et al., 2017): half the dimensions pass through unchanged
  and set a scale and shift for the other half; log |det| = sum of the log-scales.

``FlowVAE`` is a ``vae_utils.VAE`` whose ``posterior`` adds the flow; everything that takes a model (``vu.fit``,
``vu.evaluate_elbo``, ``vu.estimate_log_likelihood``, ``vu.load_or_train``, the checkpoints) takes it, and its
ELBO estimates the KL by Monte Carlo (there is no closed form any more). All values in nats, per example
[B], summed over latent and pixel dimensions, as in ``vae_utils.objectives``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .model import VAE, VAEConfig
from .objectives import GaussianPosterior, log_normal_diag, reparameterize
from .validation import check_flag, check_int, check_model_inputs

__all__ = ["FlowConfig", "MaskedLinear", "MADE", "IAFStep", "CouplingStep", "Flow", "FlowVAEConfig", "FlowPosterior",
           "FlowVAE", "fit_to_density"]

KINDS = ("iaf", "coupling")


@dataclass
class FlowConfig:
    """The flow on top of the Gaussian encoder.

    steps: the number T of invertible steps (0: the plain Gaussian q).
    kind: "iaf" (inverse autoregressive, MADE-masked) or "coupling" (affine coupling).
    hidden: width of each step's hidden layer.
    context: each step also sees the encoder's hidden features h(x) (Kingma et al.'s context).
    seed: the flow's initial weights are drawn from this seed (in a forked RNG).
    """

    steps: int = 4
    kind: str = "iaf"
    hidden: int = 128
    context: bool = True
    seed: int = 1

    def __post_init__(self) -> None:
        self.steps = check_int("FlowConfig", "steps", self.steps, 0, "steps=4")
        if self.kind not in KINDS:
            raise ValueError(f"FlowConfig.kind must be one of {KINDS}, got {self.kind!r}.")
        self.hidden = check_int("FlowConfig", "hidden", self.hidden, 1, "hidden=128")
        check_flag("FlowConfig", "context", self.context)
        if self.seed is not None:
            self.seed = check_int("FlowConfig", "seed", self.seed, None, "seed=1")

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- building blocks
class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask [out, in] (MADE's masks)."""

    def __init__(self, n_in: int, n_out: int, mask: Tensor):
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """An autoregressive network (Germain et al., 2015): z [..., d] -> (m, a), each [..., d].

    Output j depends only on z_1..z_{j-1} (and on the context h, which is unmasked), so
    d m_j / d z_l = d a_j / d z_l = 0 for l >= j. One hidden ReLU layer of width `hidden`.
    context: h [..., context_dim] broadcastable against z's leading dimensions (e.g. [B, c] with
    z [S, B, d]), or None when context_dim = 0.
    """

    def __init__(self, dim: int, hidden: int, context_dim: int = 0):
        super().__init__()
        in_degree = torch.arange(1, dim + 1)  # input i has degree i
        hidden_degree = torch.arange(hidden) % max(1, dim - 1) + 1  # degrees 1..d-1, cyclic
        self.hidden = MaskedLinear(dim, hidden, (hidden_degree[:, None] >= in_degree[None, :]))
        out_mask = in_degree[:, None] > hidden_degree[None, :]  # output i sees hidden units of degree < i
        self.out = MaskedLinear(hidden, 2 * dim, torch.cat([out_mask, out_mask]))
        self.context = nn.Linear(context_dim, hidden, bias=False) if context_dim else None
        self.dim = dim

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        pre = self.hidden(z)
        if self.context is not None:
            if context is None:
                raise ValueError("this MADE was built with context_dim > 0: pass the context h(x).")
            pre = pre + self.context(context)
        m, a = self.out(F.relu(pre)).split(self.dim, dim=-1)
        return m, a


class IAFStep(nn.Module):
    """One inverse-autoregressive step: z' = g * z + (1 - g) * m, then reverse the order.

    [m, a] = MADE(z, h); the gate g = sigmoid(a + forget_bias) in (0, 1) (Kingma et al.'s numerically
    stable form; forget_bias = 2 starts each step close to the identity, g ~ 0.88).
    forward: z [..., d] -> (z' [..., d], log|det dz'/dz| [...]) with log|det| = sum_j log g_j
    (the Jacobian of the update is triangular; the reversal is a permutation, |det| = 1).
    """

    def __init__(self, dim: int, hidden: int, context_dim: int = 0, forget_bias: float = 2.0):
        super().__init__()
        self.made = MADE(dim, hidden, context_dim)
        self.forget_bias = forget_bias

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        m, a = self.made(z, context)
        a = a + self.forget_bias
        gate = torch.sigmoid(a)
        z_new = gate * z + (1 - gate) * m
        return z_new.flip(-1), F.logsigmoid(a).sum(-1)

    def inverse(self, z_new: Tensor, context: Tensor | None = None) -> Tensor:
        """The z with forward(z)[0] = z_new: d sequential passes (output i needs z_<i first)."""
        y = z_new.flip(-1)
        z = torch.zeros_like(y)
        for _ in range(y.shape[-1]):
            m, a = self.made(z, context)
            gate = torch.sigmoid(a + self.forget_bias)
            z = (y - (1 - gate) * m) / gate
        return z


class CouplingStep(nn.Module):
    """One affine coupling step: the dimensions where `mask` is 1 pass through and set the rest.

    z' = z_a + (1 - mask) * (z * exp(log_scale) + shift), [log_scale, shift] = net(z_a, h), z_a = mask * z,
    log_scale = tanh(.) (bounded log-scales keep training stable). forward: z [..., d] -> (z' [..., d],
    log|det| [...]) with log|det| = the sum of log_scale over the transformed dimensions (the Jacobian is
    triangular).
    """

    def __init__(self, dim: int, hidden: int, context_dim: int = 0, parity: int = 0):
        super().__init__()
        self.register_buffer("mask", (torch.arange(dim) % 2 == parity).float())
        self.inner = nn.Linear(dim, hidden)
        self.context = nn.Linear(context_dim, hidden, bias=False) if context_dim else None
        self.out = nn.Linear(hidden, 2 * dim)
        self.dim = dim

    def _scale_shift(self, z_a: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        pre = self.inner(z_a)
        if self.context is not None:
            if context is None:
                raise ValueError("this coupling step was built with context_dim > 0: pass the context h(x).")
            pre = pre + self.context(context)
        log_scale, shift = self.out(F.relu(pre)).split(self.dim, dim=-1)
        free = 1 - self.mask
        return torch.tanh(log_scale) * free, shift * free

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z_a = z * self.mask
        log_scale, shift = self._scale_shift(z_a, context)
        return z_a + (1 - self.mask) * z * torch.exp(log_scale) + shift, log_scale.sum(-1)

    def inverse(self, z_new: Tensor, context: Tensor | None = None) -> Tensor:
        z_a = z_new * self.mask
        log_scale, shift = self._scale_shift(z_a, context)
        return z_a + (1 - self.mask) * (z_new - shift) * torch.exp(-log_scale)


class Flow(nn.Module):
    """T steps of one kind, applied in order. forward: z_0 [..., d] -> (z_T [..., d], sum log|det| [...])."""

    def __init__(self, dim: int, config: FlowConfig, context_dim: int = 0):
        super().__init__()
        context_dim = context_dim if config.context else 0
        with torch.random.fork_rng(devices=[], enabled=config.seed is not None):
            if config.seed is not None:
                torch.manual_seed(config.seed)
            if config.kind == "iaf":
                steps = [IAFStep(dim, config.hidden, context_dim) for _ in range(config.steps)]
            else:
                steps = [CouplingStep(dim, config.hidden, context_dim, parity=t % 2) for t in range(config.steps)]
        self.steps = nn.ModuleList(steps)
        self.uses_context = context_dim > 0

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        context = context if self.uses_context else None
        for step in self.steps:
            z, step_log_det = step(z, context)
            log_det = log_det + step_log_det
        return z, log_det

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """z_T [..., d] -> z_0 [..., d] (the steps undone in reverse order)."""
        context = context if self.uses_context else None
        for step in reversed(self.steps):
            z = step.inverse(z, context)
        return z


# --------------------------------------------------------------------------- the VAE with a flow posterior
@dataclass
class FlowVAEConfig(VAEConfig):
    """A ``VAEConfig`` plus ``flow``, the ``FlowConfig`` of the steps after the Gaussian encoder (a dict
    from ``to_dict`` is turned back into one). Every other field means what it means for ``VAEConfig``."""

    flow: FlowConfig = field(default_factory=FlowConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.flow, dict):
            self.flow = FlowConfig(**self.flow)
        if not isinstance(self.flow, FlowConfig):
            raise ValueError(f"FlowVAEConfig.flow must be a FlowConfig, got {type(self.flow).__name__}")


class FlowPosterior:
    """q_φ(z_T|x): the Gaussian ``base`` [B, d] pushed through ``flow`` with the encoder's features as
    ``context`` [B, c]. ``mu`` and ``logvar`` are the base's (what ``encode`` returns). ``log_prob`` of the
    sample ``rsample`` just drew comes from the change of variables at no cost; of any other z it goes
    through the flow's inverse (d sequential passes for an IAF)."""

    def __init__(self, base: GaussianPosterior, flow: Flow, context: Tensor):
        self.base, self.flow, self.context = base, flow, context
        self.mu, self.logvar = base.mu, base.logvar
        self._drawn: tuple[Tensor, Tensor] | None = None  # the last sample and its log-density

    def rsample(self, n_samples: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterized z_T: [B, d], or [S, B, d] with n_samples = S."""
        z0 = self.base.rsample(n_samples, generator)
        z, log_det = self.flow(z0, self.context)
        self._drawn = (z, self.base.log_prob(z0) - log_det)  # log q(z_T) = log q(z_0) - log|det|
        return z

    def log_prob(self, z: Tensor) -> Tensor:
        """log q_φ(z|x): z [..., B, d] -> [...]."""
        if self._drawn is not None and z is self._drawn[0]:
            return self._drawn[1]
        z0 = self.flow.inverse(z, self.context)
        return self.base.log_prob(z0) - self.flow(z0, self.context)[1]

    def kl_to_prior(self) -> None:
        """No closed form for a flow: the ELBO estimates the KL by Monte Carlo."""
        return None


class FlowVAE(VAE):
    """A VAE whose posterior is the Gaussian encoder followed by a flow; everything else is the VAE's.

    ``posterior(x)`` is a ``FlowPosterior``, so ``vu.vae_elbo`` (Monte Carlo KL), ``vu.fit``,
    ``vu.evaluate_elbo`` and ``vu.estimate_log_likelihood`` measure the flow, not its Gaussian base.
    """

    config_class: ClassVar[type] = FlowVAEConfig

    def __init__(self, config: FlowVAEConfig | None = None):
        super().__init__(config)
        self.flow = Flow(self.config.latent_dim, self.config.flow, context_dim=self.encoder.mu_head.in_features)

    def posterior(self, x: Tensor, y: Tensor | None = None) -> FlowPosterior:
        """q_φ(z|x) for images x: [B, C, H, W]: the encoder's Gaussian, then the flow (context h(x))."""
        h = self.encoder.trunk(x)  # [B, c]
        return FlowPosterior(GaussianPosterior(*self.encoder.heads(h)), self.flow, h)

    @torch.no_grad()
    def posterior_mean(self, x: Tensor, n_samples: int = 100, generator: torch.Generator | None = None) -> Tensor:
        """E_q[z] estimated with S samples: x [B, C, H, W] -> [B, d] (for active units)."""
        check_model_inputs(self, x, None, "FlowVAE.posterior_mean")
        return self.posterior(x).rsample(n_samples, generator).mean(0)


# --------------------------------------------------------------------------- flows on a known density
def fit_to_density(log_density: Callable[[Tensor], Tensor], dim: int, config: FlowConfig, iterations: int = 500,
                   n_samples: int = 256, lr: float = 1e-2, seed: int = 0) -> tuple[nn.Module, list[float]]:
    """Fit q = (learned Gaussian, then a flow without context) to a target density by maximizing
    E_q[log_density(z) - log q(z)] (the ELBO; equal to -KL(q || p) when the target is normalized).

    log_density: z [..., dim] -> [...]. Returns (q, history of the ELBO estimates). The fitted q has
    ``q.sample(n, generator) -> (z [n, dim], log q [n])`` and ``q.log_prob(z [..., dim]) -> [...]``.
    """
    config = FlowConfig(**{**config.to_dict(), "context": False})
    q = _FlowDensity(dim, config)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(q.parameters(), lr=lr)
    history = []
    for _ in range(iterations):
        z, log_q = q.sample(n_samples, generator)
        elbo = (log_density(z) - log_q).mean()
        optimizer.zero_grad()
        (-elbo).backward()
        optimizer.step()
        history.append(elbo.item())
    return q, history


class _FlowDensity(nn.Module):
    """A density on R^d: N(mu, diag exp(logvar)) pushed through a Flow (no context)."""

    def __init__(self, dim: int, config: FlowConfig):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(dim))
        self.logvar = nn.Parameter(torch.zeros(dim))
        self.flow = Flow(dim, config)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        z0 = reparameterize(self.mu, self.logvar, n, generator)  # [n, d]
        z, log_det = self.flow(z0)
        return z, log_normal_diag(z0, self.mu, self.logvar) - log_det

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z) = log N(f^{-1}(z)) - log|det J_f(f^{-1}(z))|: z [..., d] -> [...]."""
        z0 = self.flow.inverse(z)
        return log_normal_diag(z0, self.mu, self.logvar) - self.flow(z0)[1]
