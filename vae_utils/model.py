"""The variational autoencoder: configuration, model, and the protocol every model of the library follows.

q_φ(z|x) = N(mu(x), diag exp(logvar(x))), p(z) = N(0, I), p_θ(x|z) = Bernoulli(sigmoid(logits(z))) or
N(mean(z), sigma^2) per pixel. ``forward`` computes no loss: see ``vae_utils.objectives``.

The protocol (``VAE``, ``flows.FlowVAE`` and ``conditional.ConditionalVAE`` follow it; ``fit``,
``evaluate_elbo``, ``estimate_log_likelihood``, ``load_or_train`` and the checkpoints use nothing else):

    model.config                         a dataclass; type(model)(model.config) rebuilds the model
    model.conditional                    True when batches carry labels y (a ConditionalVAE)
    model.posterior(x, y=None)           q_φ(z|x[, y]): rsample, log_prob, kl_to_prior
    model.decoder_output(z, y=None)      the decoder's logits or means [..., C, H, W]
    model.log_likelihood(x, decoded)     log p_θ(x|z), summed over pixels: [..., B]
    model.log_joint(x, z, y=None)        log p_θ(x, z[| y]): [S, B]

These are the math and check nothing. The methods for people -- ``encode``, ``decode``, ``sample``,
``reconstruct``, ``forward`` -- check their inputs (``vae_utils.validation``), then call them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from .networks import build_decoder, build_encoder, conv_feature_shape
from .objectives import (GaussianPosterior, bernoulli_log_likelihood, gaussian_log_likelihood, log_standard_normal,
                         reparameterize, standard_normal)
from .validation import check_int, check_latents, check_model_inputs, check_real, is_int, model_labels

__all__ = ["VAEConfig", "VAEOutput", "VAE"]

ARCHITECTURES = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")
DEFAULT_HIDDEN_DIMS = {"mlp": (400,), "conv": (32, 64)}

@dataclass
class VAEConfig:
    """Everything needed to rebuild a VAE (stored in checkpoints via to_dict / from_dict).

    latent_dim: size d of z.
    architecture: "mlp" (fully connected) or "conv" (strided convolutions, 28 -> 14 -> 7, and
        transposed convolutions back).
    hidden_dims: MLP layer widths, or conv channel counts (one stride-2 layer each). None picks
        the architecture's default: (400,) for mlp (the reference 784-400-20 VAE), (32, 64) for conv.
    image_shape: (C, H, W) of the images, e.g. (1, 28, 28).
    likelihood: "bernoulli" (decoder outputs logits) or "gaussian" (decoder outputs means).
    decoder_std: gaussian only: a fixed per-pixel standard deviation, or None to learn one
        log-variance per pixel.
    seed: the initial weights are drawn with this seed (in a forked RNG, so building a model
        does not disturb the global random stream): the same config gives the same weights.
        None draws them from the global RNG (``torch.manual_seed`` decides).
    """

    latent_dim: int = 20
    architecture: str = "mlp"
    hidden_dims: tuple[int, ...] | None = None
    image_shape: tuple[int, int, int] = (1, 28, 28)
    likelihood: str = "bernoulli"
    decoder_std: float | None = None
    seed: int | None = 0

    def __post_init__(self) -> None:
        if not is_int(self.latent_dim) or self.latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int, got {self.latent_dim!r}")
        self.latent_dim = int(self.latent_dim)
        if not isinstance(self.architecture, str) or self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        self.hidden_dims = _hidden_dims(self.hidden_dims, self.architecture)
        self.image_shape = _image_shape(self.image_shape)
        if self.architecture == "conv":
            conv_feature_shape(self.image_shape, self.hidden_dims)  # a clear error if it does not fit
        if not isinstance(self.likelihood, str) or self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.decoder_std is not None:
            if self.likelihood != "gaussian":
                raise ValueError("decoder_std applies only to likelihood='gaussian'; leave it None for 'bernoulli'")
            self.decoder_std = check_real("VAEConfig", "decoder_std", self.decoder_std, "> 0",
                                          "decoder_std=0.1 (or None to learn it)")
        if self.seed is not None and not (is_int(self.seed) and -(2**63) <= self.seed < 2**64):
            raise ValueError(f"seed must be an int in [-2**63, 2**64) (or None for the global RNG), got {self.seed!r}")
        self.seed = None if self.seed is None else int(self.seed)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (tuples as lists, so it is JSON- and weights_only-safe)."""
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        """Inverse of to_dict (lists become tuples again); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)


def _hidden_dims(value: Any, architecture: str) -> tuple[int, ...]:
    value = DEFAULT_HIDDEN_DIMS[architecture] if value is None else value
    if is_int(value):
        raise ValueError(f"hidden_dims must be a sequence of ints, got the int {value!r}; write hidden_dims=({value},)")
    if not isinstance(value, (tuple, list)) or not all(is_int(h) and h >= 1 for h in value):
        raise ValueError(f"hidden_dims must be a tuple of positive ints, e.g. (400,), got {value!r}")
    if architecture == "conv" and not value:
        raise ValueError("the conv architecture needs at least one channel count in hidden_dims, e.g. (32, 64)")
    return tuple(int(h) for h in value)  # lists (e.g. from JSON) become tuples


def _image_shape(value: Any) -> tuple[int, int, int]:
    shape = tuple(value) if isinstance(value, (tuple, list, torch.Size)) else None
    if shape is None or len(shape) != 3 or not all(is_int(s) and s >= 1 for s in shape):
        hint = f" (add the channel count: image_shape=(1, {shape[0]}, {shape[1]}))" if shape and len(shape) == 2 else ""
        raise ValueError(f"image_shape must be (C, H, W) with positive ints, e.g. (1, 28, 28), got {value!r}{hint}")
    return tuple(int(s) for s in shape)


class VAEOutput(NamedTuple):
    """What VAE.forward returns (no loss)."""

    decoded: Tensor  # [B, C, H, W] Bernoulli logits or Gaussian means
    mu: Tensor  # [B, d]
    logvar: Tensor  # [B, d]
    z: Tensor  # [B, d] one reparameterized sample from q(z|x)


class VAE(nn.Module):
    """A VAE with a Gaussian encoder q_φ(z|x), a standard normal prior and a Bernoulli or Gaussian decoder."""

    conditional: ClassVar[bool] = False  # batches are images; a ConditionalVAE's are (images, labels)
    config_class: ClassVar[type] = VAEConfig

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        config = self.config_class() if config is None else config
        if type(config) is not self.config_class:
            kind = type(config).__name__
            fix = f" for a dict write {type(self).__name__}({self.config_class.__name__}.from_dict(d))" if isinstance(
                config, dict) else " (vu.models.build_model(config) builds the model a config is for)"
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, not {kind};{fix}")
        self.config = config
        with torch.random.fork_rng(devices=[], enabled=config.seed is not None):
            if config.seed is not None:
                torch.manual_seed(config.seed)
            self.encoder, self.decoder = self.build_networks(config)
        self.fixed_decoder_logvar = None  # 2 log(decoder_std) for a fixed Gaussian std
        if config.likelihood == "gaussian" and config.decoder_std is None:
            self.decoder_logvar = nn.Parameter(torch.zeros(config.image_shape))  # learned, per pixel
        else:
            self.register_parameter("decoder_logvar", None)
            if config.likelihood == "gaussian":
                self.fixed_decoder_logvar = 2.0 * math.log(config.decoder_std)

    def build_networks(self, config: VAEConfig) -> tuple[nn.Module, nn.Module]:
        """The encoder (images -> mu, logvar) and the decoder (z [N, d] -> [N, C, H, W])."""
        args = (config.architecture, config.image_shape, config.hidden_dims, config.latent_dim)
        return build_encoder(*args), build_decoder(*args)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ the model (the math: no input checks)
    def posterior(self, x: Tensor, y: Tensor | None = None) -> GaussianPosterior:
        """q_φ(z|x) for images x: [B, C, H, W]: a Gaussian with mu, logvar [B, d]."""
        return GaussianPosterior(*self.encoder(x))

    def decoder_output(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """z: [..., d] -> decoded [..., C, H, W] (Bernoulli logits or Gaussian means), leading dims kept."""
        decoded = self.decoder(z.reshape(-1, self.config.latent_dim))
        return decoded.view(*z.shape[:-1], *self.config.image_shape)

    def log_likelihood(self, x: Tensor, decoded: Tensor) -> Tensor:
        """log p_θ(x|z) SUMMED over pixels. x: [B, C, H, W]; decoded: [..., B, C, H, W] -> [..., B]."""
        if self.config.likelihood == "bernoulli":
            return bernoulli_log_likelihood(x, decoded)
        logvar = self.decoder_logvar if self.decoder_logvar is not None else self.fixed_decoder_logvar
        return gaussian_log_likelihood(x, decoded, logvar)

    def log_joint(self, x: Tensor, z: Tensor, y: Tensor | None = None) -> Tensor:
        """log p_θ(x, z) = log p_θ(x|z) + log p(z). x: [B, C, H, W]; z: [S, B, d] -> [S, B]."""
        return self.log_likelihood(x, self.decoder_output(z, y)) + log_standard_normal(z)

    def mean_image(self, decoded: Tensor) -> Tensor:
        """The image to show a person: sigmoid(logits) (Bernoulli) or the means (Gaussian). Shape kept."""
        return torch.sigmoid(decoded) if self.config.likelihood == "bernoulli" else decoded

    # ------------------------------------------------------------------ for people: the same, inputs checked
    def encode(self, x: Tensor, y: Any = None) -> tuple[Tensor, Tensor]:
        """x: [B, C, H, W] in [0, 1] -> (mu [B, d], logvar [B, d]) of q_φ(z|x) (a flow's: its Gaussian base).

        x is checked first: a tensor of the model's image shape, dtype and device, not empty, every value
        finite and in [0, 1] (one reduction and host sync); so are a conditional model's labels y.
        """
        q = self.posterior(x, check_model_inputs(self, x, y, f"{type(self).__name__}.encode"))
        return q.mu, q.logvar

    def reparameterize(self, mu: Tensor, logvar: Tensor, n_samples: int | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I): [B, d], or [S, B, d] with n_samples=S.

        Differentiable in mu and logvar. A CPU generator also works for a model on the GPU.
        """
        if n_samples is not None:
            check_int("reparameterize", "n_samples", n_samples, 1)
        return reparameterize(mu, logvar, n_samples, generator)

    def decode(self, z: Tensor, y: Any = None) -> Tensor:
        """z: [..., d] -> decoded [..., C, H, W] (Bernoulli logits or Gaussian means), leading dims kept.

        A conditional model's labels y: [B] for z [..., B, d] (or one int for every code).
        """
        caller = f"{type(self).__name__}.decode"
        check_latents(self, z, caller)
        batch = z.shape[:-1] if is_int(y) else z.shape[-2:-1]
        return self.decoder_output(z, model_labels(self, y, tuple(batch), caller))

    @torch.no_grad()
    def sample(self, n: int, y: Any = None, generator: torch.Generator | None = None) -> Tensor:
        """Mean images of n latents drawn from the prior: [n, C, H, W] (a conditional model's with labels y:
        one int for all n, or [n]). Runs without gradients."""
        if not is_int(n) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        y = model_labels(self, y, (n,), f"{type(self).__name__}.sample")
        z = standard_normal((n, self.config.latent_dim), next(self.parameters()), generator)
        return self.mean_image(self.decoder_output(z, y))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Any = None) -> Tensor:
        """Mean image decoded from the posterior mean mu(x): [B, C, H, W]. Runs without gradients."""
        y = check_model_inputs(self, x, y, f"{type(self).__name__}.reconstruct")
        return self.mean_image(self.decoder_output(self.posterior(x, y).mu, y))

    def forward(self, x: Tensor, y: Any = None) -> VAEOutput:
        """x: [B, C, H, W] -> VAEOutput(decoded, mu, logvar, z) with one reparameterized z. No loss."""
        y = check_model_inputs(self, x, y, f"{type(self).__name__}.forward")
        q = self.posterior(x, y)
        z = q.rsample()
        return VAEOutput(self.decoder_output(z, y), q.mu, q.logvar, z)
