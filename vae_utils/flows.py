"""Normalizing-flow posteriors: a Gaussian q_φ(z|x) followed by T invertible steps.

    z_0 = mu(x) + exp(logvar(x) / 2) * eps,   eps ~ N(0, I)        (the VAE's Gaussian encoder)
    z_t = f_t(z_{t-1}; h(x)),  t = 1..T                              (invertible steps)
    log q_φ(z_T|x) = log N(z_0; mu, diag exp(logvar)) - sum_t log |det d f_t / d z_{t-1}|

(the change-of-variables formula; Rezende & Mohamed, 2015). Two kinds of step:

* ``IAFStep`` (inverse autoregressive flow, Kingma et al., 2016): [m, s] = MADE(z, h),
  sigma = sigmoid(s), z' = sigma * z + (1 - sigma) * m. Output i depends on z_<i only, so the
  Jacobian is triangular and log |det| = sum_i log sigma_i. The dimension order is reversed after
  each step so that every dimension eventually depends on every other.
* ``CouplingStep`` (affine coupling, Dinh et al., 2017): half the dimensions pass through unchanged
  and set a scale and shift for the other half; log |det| = sum of the log-scales.

``FlowVAE`` reuses a ``vae_utils.VAE``'s encoder and decoder and adds the flow; its ELBO estimates
the KL by Monte Carlo (there is no closed form any more). All values in nats, per example [B],
summed over latent and pixel dimensions, as in ``vae_utils.objectives``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .data import ImageDataset
from .device import seed_everything
from .evaluation import EVAL_BINARIZE_SEED, image_batches, mean_elbo_terms
from .model import VAE, VAEConfig
from .objectives import ELBO, elbo_terms, log_normal_diag, log_standard_normal, reparameterize
from .training import default_optimizer, ticking, train_epoch

__all__ = [
    "FlowConfig",
    "MaskedLinear",
    "MADE",
    "IAFStep",
    "CouplingStep",
    "Flow",
    "FlowVAE",
    "flow_elbo",
    "flow_objective",
    "evaluate_elbo",
    "estimate_log_likelihood",
    "train",
    "load_or_train",
    "fit_to_density",
]

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
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"FlowConfig.steps must be an int >= 0, got {self.steps!r}.")
        if self.kind not in KINDS:
            raise ValueError(f"FlowConfig.kind must be one of {KINDS}, got {self.kind!r}.")
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 1:
            raise ValueError(f"FlowConfig.hidden must be an int >= 1, got {self.hidden!r}.")

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
    """An autoregressive network (Germain et al., 2015): z [..., d] -> (m, s), each [..., d].

    Output i depends only on z_1..z_{i-1} (and on the context h, which is unmasked), so
    d m_i / d z_j = d s_i / d z_j = 0 for j >= i. One hidden ReLU layer of width `hidden`.
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
        m, s = self.out(F.relu(pre)).split(self.dim, dim=-1)
        return m, s


class IAFStep(nn.Module):
    """One inverse-autoregressive step: z' = sigma * z + (1 - sigma) * m, then reverse the order.

    [m, s] = MADE(z, h); sigma = sigmoid(s + forget_bias) in (0, 1) (Kingma et al.'s numerically
    stable form; forget_bias = 2 starts each step close to the identity, sigma ~ 0.88).
    forward: z [..., d] -> (z' [..., d], log|det dz'/dz| [...]) with log|det| = sum_i log sigma_i
    (the Jacobian of the update is triangular; the reversal is a permutation, |det| = 1).
    """

    def __init__(self, dim: int, hidden: int, context_dim: int = 0, forget_bias: float = 2.0):
        super().__init__()
        self.made = MADE(dim, hidden, context_dim)
        self.forget_bias = forget_bias

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        m, s = self.made(z, context)
        s = s + self.forget_bias
        sigma = torch.sigmoid(s)
        z_new = sigma * z + (1 - sigma) * m
        return z_new.flip(-1), F.logsigmoid(s).sum(-1)

    def inverse(self, z_new: Tensor, context: Tensor | None = None) -> Tensor:
        """The z with forward(z)[0] = z_new: d sequential passes (output i needs z_<i first)."""
        y = z_new.flip(-1)
        z = torch.zeros_like(y)
        for _ in range(y.shape[-1]):
            m, s = self.made(z, context)
            sigma = torch.sigmoid(s + self.forget_bias)
            z = (y - (1 - sigma) * m) / sigma
        return z


class CouplingStep(nn.Module):
    """One affine coupling step: the dimensions where `mask` is 1 pass through and set the rest.

    z' = z_a + (1 - mask) * (z * exp(s) + t), [s, t] = net(z_a, h), z_a = mask * z, s = tanh(.)
    (bounded log-scales keep training stable). forward: z [..., d] -> (z' [..., d], log|det| [...])
    with log|det| = sum over the transformed dimensions of s (the Jacobian is triangular).
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
        s, t = self.out(F.relu(pre)).split(self.dim, dim=-1)
        free = 1 - self.mask
        return torch.tanh(s) * free, t * free

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z_a = z * self.mask
        s, t = self._scale_shift(z_a, context)
        return z_a + (1 - self.mask) * z * torch.exp(s) + t, s.sum(-1)

    def inverse(self, z_new: Tensor, context: Tensor | None = None) -> Tensor:
        z_a = z_new * self.mask
        s, t = self._scale_shift(z_a, context)
        return z_a + (1 - self.mask) * (z_new - t) * torch.exp(-s)


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
class FlowVAE(nn.Module):
    """A VAE whose posterior is the Gaussian encoder followed by a flow.

    ``self.vae`` is an ordinary ``vae_utils.VAE`` (its encoder gives mu, logvar and the hidden
    features h(x); its decoder is p_θ(x|z)); ``self.flow`` transforms the Gaussian sample.
    There is deliberately no ``encode`` method: ``vu.evaluate_elbo`` and ``vu.estimate_log_likelihood``
    assume a Gaussian q and would silently measure the base Gaussian; use this module's
    ``evaluate_elbo`` and ``estimate_log_likelihood`` instead.
    """

    def __init__(self, vae_config: VAEConfig | None = None, flow_config: FlowConfig | None = None):
        super().__init__()
        self.vae = VAE(vae_config or VAEConfig())
        self.config = self.vae.config
        self.flow_config = flow_config or FlowConfig()
        context_dim = self.vae.encoder.mu_head.in_features
        self.flow = Flow(self.config.latent_dim, self.flow_config, context_dim)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode_base(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: [B, C, H, W] -> (mu [B, d], logvar [B, d], h [B, c]): the base Gaussian and the features."""
        encoder = self.vae.encoder
        h = encoder.trunk(x)
        return encoder.mu_head(h), encoder.logvar_head(h), h

    def sample_posterior(
        self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """S samples z_T ~ q_φ(z|x) and their log-density: (z [S, B, d], log q_φ(z|x) [S, B]).

        Reparameterized (differentiable in the encoder's and the flow's parameters).
        """
        mu, logvar, h = self.encode_base(x)
        z0 = reparameterize(mu, logvar, n_samples, generator)  # [S, B, d]
        z, log_det = self.flow(z0, h)
        return z, log_normal_diag(z0, mu, logvar) - log_det

    def decode(self, z: Tensor) -> Tensor:
        """z: [..., d] -> decoded [..., C, H, W] (the VAE's decoder)."""
        return self.vae.decode(z)

    def log_likelihood(self, x: Tensor, decoded: Tensor) -> Tensor:
        """log p_θ(x|z) summed over pixels: x [B, C, H, W], decoded [..., B, C, H, W] -> [..., B]."""
        return self.vae.log_likelihood(x, decoded)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x, z): x [B, C, H, W], z [S, B, d] -> [S, B]."""
        return self.vae.log_joint(x, z)

    def mean_image(self, decoded: Tensor) -> Tensor:
        return self.vae.mean_image(decoded)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Mean images of n prior samples: [n, C, H, W]."""
        return self.vae.sample(n, generator)

    @torch.no_grad()
    def posterior_mean(self, x: Tensor, n_samples: int = 100, generator: torch.Generator | None = None) -> Tensor:
        """E_q[z] estimated with S samples: x [B, C, H, W] -> [B, d] (for active units)."""
        return self.sample_posterior(x, n_samples, generator)[0].mean(0)


def flow_elbo(model: FlowVAE, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> ELBO:
    """Monte Carlo ELBO of a ``FlowVAE`` per example (maximize): fields [B], in nats.

    reconstruction = mean over S samples of log p_θ(x|z_T); kl = mean of log q_φ(z_T|x) - log p(z_T)
    (a Monte Carlo estimate: no closed form for a flow; one estimate can be negative).
    With ``steps = 0`` and the same generator state this equals
    ``vae_elbo(model.vae, x, n_samples=S, analytic_kl=False, generator=...)`` exactly.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    z, log_q = model.sample_posterior(x, n_samples, generator)
    reconstruction = model.log_likelihood(x, model.decode(z)).mean(0)
    kl = (log_q - log_standard_normal(z)).mean(0)
    return elbo_terms(reconstruction, kl)


def flow_objective(n_samples: int = 1) -> Callable[[FlowVAE, Tensor], ELBO]:
    """``objective(model, x) -> ELBO`` for training a FlowVAE; the loss is ``-objective(model, x).objective.mean()``."""

    def objective(model: FlowVAE, x: Tensor) -> ELBO:
        return flow_elbo(model, x, n_samples)

    objective.__qualname__ = f"flow_objective(n_samples={n_samples})"
    return objective


# --------------------------------------------------------------------------- evaluation
def _check_model(caller: str, model) -> None:
    if not isinstance(model, FlowVAE):
        raise TypeError(
            f"flows.{caller} needs a FlowVAE, got {type(model).__name__}; for a plain VAE use vu.{caller}."
        )


@torch.no_grad()
def evaluate_elbo(
    model: FlowVAE,
    data: ImageDataset | Tensor,
    batch_size: int = 1000,
    binarize_seed: int | None = EVAL_BINARIZE_SEED,
    seed: int = 0,
    n_samples: int = 1,
) -> dict[str, float]:
    """Means over examples of the FlowVAE's ELBO, reconstruction and Monte Carlo KL (nats), like
    ``vu.evaluate_elbo``: an ImageDataset is binarized with ``binarize_seed`` first (None: as is), and the
    noise comes from a CPU generator seeded with ``seed``, so the result is the same on every device.

    Returns ``{"elbo", "reconstruction", "kl", "n"}``.
    """
    _check_model("evaluate_elbo", model)
    batches = image_batches(data, batch_size, model.device, binarize_seed)
    return mean_elbo_terms(model, batches, lambda x, generator: flow_elbo(model, x, n_samples, generator), seed,
                           "flows.evaluate_elbo")


@torch.no_grad()
def estimate_log_likelihood(
    model: FlowVAE,
    data_or_x: ImageDataset | Tensor,
    k: int = 5000,
    batch_size: int = 50,
    chunk_size: int = 50,
    seed: int = 0,
    progress: bool = True,
    binarize_seed: int | None = EVAL_BINARIZE_SEED,
) -> Tensor:
    """Importance-weighted estimate of log p_θ(x) with the flow q_φ(z|x) as proposal: [N] on the CPU.

    log (1/K) sum_k p_θ(x, z_k) / q_φ(z_k|x), z_k ~ q_φ(z|x), computed `chunk_size` samples at a
    time with a running logaddexp (memory does not grow with K). Same conventions as
    ``vu.estimate_log_likelihood``.
    """
    _check_model("estimate_log_likelihood", model)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (importance samples per example) must be an int >= 1, got {k!r}.")
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    estimates = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(data_or_x), desc=f"log p(x), flow q, K={k}", unit="img")
    try:
        for x in image_batches(data_or_x, batch_size, device, binarize_seed):
            total = None
            for start in range(0, k, chunk_size):
                z, log_q = model.sample_posterior(x, min(chunk_size, k - start), generator)
                chunk = torch.logsumexp(model.log_joint(x, z) - log_q, dim=0)  # [B]
                total = chunk if total is None else torch.logaddexp(total, chunk)
            estimates.append(total - math.log(k))
            if bar is not None:
                bar.update(x.shape[0])
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return torch.cat(estimates).cpu()


# --------------------------------------------------------------------------- training
def train(
    model: nn.Module,
    train_data: ImageDataset,
    epochs: int,
    objective: Callable[[nn.Module, Tensor], ELBO],
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, list[float]]:
    """``epochs`` passes of ``vu.train_epoch`` (the loop ``fit`` runs: Adam on
    ``-objective(model, x).objective.mean()``, nats per example, minimized) on dynamically binarized
    batches, seeded like ``fit`` so a FlowVAE and a VAE see the same batches.

    Returns ``{"train_elbo": [...], "seconds": [...]}``, one entry per epoch (the mean training
    objective over the epoch's batches, and the epoch's wall time).
    """
    device = model.device
    seed_everything(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    train_data = train_data.to(device)
    optimizer = default_optimizer(model, lr)
    history: dict[str, list[float]] = {"train_elbo": [], "seconds": []}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * math.ceil(len(train_data) / batch_size), desc="training", unit="step")
    try:
        for _ in range(epochs):
            start = time.perf_counter()
            batches = train_data.batches(batch_size, generator=generator, binarize=True)
            sums = train_epoch(model, ticking(batches, bar, every=1), optimizer, objective)
            history["train_elbo"].append(float(sums["objective"] / sums["n"]))
            history["seconds"].append(time.perf_counter() - start)
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    return history


def load_or_train(
    path: str | Path,
    vae_config: VAEConfig,
    flow_config: FlowConfig,
    train_data: ImageDataset,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[FlowVAE, dict[str, list[float]]]:
    """A FlowVAE trained with ``train`` (ELBO, one sample), cached at ``path``.

    The file is reused when every setting (configs, epochs, batch size, lr, seed, training-set
    name and size) matches; otherwise the model is trained and saved. Returns (model, history).
    """
    path = Path(path)
    settings = {
        "vae_config": vae_config.to_dict(),
        "flow_config": flow_config.to_dict(),
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
        "train_data": [train_data.name, len(train_data)],
    }
    model = FlowVAE(vae_config, flow_config).to(train_data.device)
    if path.exists():
        saved = torch.load(path, map_location=train_data.device, weights_only=True)
        if saved.get("settings") == settings:
            model.load_state_dict(saved["state_dict"])
            return model.eval(), saved["history"]
    history = train(model, train_data, epochs, flow_objective(), batch_size, lr, seed, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"settings": settings, "state_dict": model.state_dict(), "history": history}, tmp)
    tmp.replace(path)
    return model, history


# --------------------------------------------------------------------------- flows on a known density
def fit_to_density(
    log_density: Callable[[Tensor], Tensor],
    dim: int,
    config: FlowConfig,
    iterations: int = 500,
    n_samples: int = 256,
    lr: float = 1e-2,
    seed: int = 0,
) -> tuple[nn.Module, list[float]]:
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
        history.append(float(elbo))
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
