"""The variational autoencoder: configuration, model and its named output.

q(z|x) = N(mu(x), diag exp(logvar(x))), p(z) = N(0, I), p(x|z) = Bernoulli(sigmoid(logits(z)))
or N(mean(z), sigma^2) per pixel. `forward` computes no loss: see `vae_utils.objectives.vae_elbo`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .networks import build_decoder, build_encoder, conv_feature_shape
from .objectives import (
    bernoulli_log_likelihood,
    gaussian_log_likelihood,
    log_standard_normal,
    reparameterize,
    standard_normal,
)

__all__ = ["VAEConfig", "VAEOutput", "VAE"]

ARCHITECTURES = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")
DEFAULT_HIDDEN_DIMS = {"mlp": (400,), "conv": (32, 64)}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


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
        if not _is_int(self.latent_dim) or self.latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int, got {self.latent_dim!r}")
        self.latent_dim = int(self.latent_dim)

        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")

        if self.hidden_dims is None:
            self.hidden_dims = DEFAULT_HIDDEN_DIMS[self.architecture]
        if _is_int(self.hidden_dims):
            raise ValueError(
                f"hidden_dims must be a sequence of ints, got the int {self.hidden_dims!r}; "
                f"write hidden_dims=({self.hidden_dims},)"
            )
        if not isinstance(self.hidden_dims, (tuple, list)):
            raise ValueError(f"hidden_dims must be a tuple of ints, e.g. (400,), got {self.hidden_dims!r}")
        self.hidden_dims = tuple(self.hidden_dims)  # lists (e.g. from JSON) become tuples
        if not all(_is_int(h) and h >= 1 for h in self.hidden_dims):
            raise ValueError(f"hidden_dims must hold positive ints, got {self.hidden_dims!r}")
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        if self.architecture == "conv" and not self.hidden_dims:
            raise ValueError(
                "the conv architecture needs at least one channel count in hidden_dims, e.g. (32, 64)"
            )

        if not isinstance(self.image_shape, (tuple, list, torch.Size)):
            raise ValueError(f"image_shape must be a tuple (C, H, W), e.g. (1, 28, 28), got {self.image_shape!r}")
        shape = tuple(self.image_shape)
        if len(shape) != 3 or not all(_is_int(s) and s >= 1 for s in shape):
            hint = ""
            if len(shape) == 2:
                hint = f" (add the channel count: image_shape=(1, {shape[0]}, {shape[1]}))"
            raise ValueError(
                f"image_shape must be (C, H, W) with positive ints, got {self.image_shape!r}{hint}"
            )
        self.image_shape = tuple(int(s) for s in shape)
        if self.architecture == "conv":
            conv_feature_shape(self.image_shape, self.hidden_dims)  # a clear error if it does not fit

        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.decoder_std is not None:
            if self.likelihood != "gaussian":
                raise ValueError(
                    "decoder_std applies only to likelihood='gaussian'; leave it None for 'bernoulli'"
                )
            std = self.decoder_std
            if not isinstance(std, numbers.Real) or not (std > 0 and math.isfinite(std)):
                raise ValueError(
                    f"decoder_std must be a positive finite number (or None to learn it), got {std!r}"
                )
            self.decoder_std = float(self.decoder_std)
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an int (or None for the global RNG), got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (tuples as lists, so it is JSON- and weights_only-safe)."""
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VAEConfig":
        """Inverse of to_dict (lists become tuples again); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VAEConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)


class VAEOutput(NamedTuple):
    """What VAE.forward returns (no loss)."""

    decoded: Tensor  # [B, C, H, W] Bernoulli logits or Gaussian means
    mu: Tensor  # [B, d]
    logvar: Tensor  # [B, d]
    z: Tensor  # [B, d] one reparameterized sample from q(z|x)


class VAE(nn.Module):
    """A VAE with a Gaussian encoder q(z|x), a standard normal prior and a Bernoulli or Gaussian decoder."""

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        if config is None:
            config = VAEConfig()
        if isinstance(config, dict):
            raise TypeError("VAE takes a VAEConfig; for a dict write VAE(VAEConfig.from_dict(d))")
        if not isinstance(config, VAEConfig):
            raise TypeError(f"VAE takes a VAEConfig or None, not {type(config).__name__}")
        self.config = config
        args = (config.architecture, config.image_shape, config.hidden_dims, config.latent_dim)
        with torch.random.fork_rng(devices=[], enabled=config.seed is not None):
            if config.seed is not None:
                torch.manual_seed(config.seed)
            self.encoder = build_encoder(*args)
            self.decoder = build_decoder(*args)
        self._fixed_logvar: float | None = None
        if config.likelihood == "gaussian" and config.decoder_std is None:
            self.decoder_logvar = nn.Parameter(torch.zeros(config.image_shape))  # learned, per pixel
        else:
            self.register_parameter("decoder_logvar", None)
            if config.likelihood == "gaussian":
                self._fixed_logvar = 2.0 * math.log(config.decoder_std)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ encoder
    def _check_images(self, x: Tensor) -> None:
        c, h, w = self.config.image_shape
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor of images [B, {c}, {h}, {w}], got {type(x).__name__}")
        if x.dim() == 4 and tuple(x.shape[1:]) == self.config.image_shape:
            if not x.is_floating_point():
                raise TypeError(
                    f"expected floating-point images in [0, 1], got dtype {x.dtype}; "
                    f"convert with x.float() / 255 (or use ImageDataset.float_images())"
                )
            return
        shape = list(x.shape)
        if x.numel() > 0 and x.numel() % (c * h * w) == 0:
            fix = f"reshape it with x.view(-1, {c}, {h}, {w})"
            if tuple(x.shape) == self.config.image_shape:
                fix = f"for a single image use x.unsqueeze(0), or {fix}"
        else:
            fix = (
                f"this model was built for image_shape={self.config.image_shape}; "
                f"build a VAE(VAEConfig(image_shape=...)) for images of another size"
            )
        raise ValueError(
            f"VAE expected images of shape [B, C, H, W] = [B, {c}, {h}, {w}], got {shape}: {fix}"
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [B, C, H, W] in [0, 1] -> (mu [B, d], logvar [B, d]) of q(z|x)."""
        self._check_images(x)
        return self.encoder(x)

    def reparameterize(
        self,
        mu: Tensor,
        logvar: Tensor,
        n_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I): [B, d], or [S, B, d] with n_samples=S.

        Differentiable in mu and logvar. A CPU generator also works for a model on the GPU.
        """
        if n_samples is not None and not (_is_int(n_samples) and n_samples >= 1):
            raise ValueError(f"n_samples must be a positive int or None, got {n_samples!r}")
        return reparameterize(mu, logvar, n_samples, generator)

    # ------------------------------------------------------------------ decoder
    def decode(self, z: Tensor) -> Tensor:
        """z: [..., d] -> decoded [..., C, H, W] (Bernoulli logits or Gaussian means).

        Leading dimensions (batch, samples, or none for a single z [d]) are kept.
        """
        d = self.config.latent_dim
        if z.shape[-1:] != (d,):
            raise ValueError(f"decode expected latents of shape [..., {d}], got {list(z.shape)}")
        decoded = self.decoder(z.reshape(-1, d))
        return decoded.view(*z.shape[:-1], *self.config.image_shape)

    def _decoder_logvar(self) -> Tensor | float:
        return self.decoder_logvar if self.decoder_logvar is not None else self._fixed_logvar

    def log_likelihood(self, x: Tensor, decoded: Tensor) -> Tensor:
        """log p(x|z) SUMMED over pixels. x: [B, C, H, W]; decoded: [..., B, C, H, W] -> [..., B]."""
        if self.config.likelihood == "bernoulli":
            return bernoulli_log_likelihood(x, decoded)
        return gaussian_log_likelihood(x, decoded, self._decoder_logvar())

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x, z) = log p(x|z) + log p(z). x: [B, C, H, W]; z: [S, B, d] -> [S, B]."""
        return self.log_likelihood(x, self.decode(z)) + log_standard_normal(z)

    def mean_image(self, decoded: Tensor) -> Tensor:
        """The image to show a person: sigmoid(logits) (Bernoulli) or the means (Gaussian). Shape kept."""
        return torch.sigmoid(decoded) if self.config.likelihood == "bernoulli" else decoded

    # ------------------------------------------------------------------ whole model
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Mean images of n latents drawn from the prior: [n, C, H, W]. Runs without gradients."""
        if not _is_int(n) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        reference = next(self.parameters())
        z = standard_normal((n, self.config.latent_dim), reference, generator)
        return self.mean_image(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean image decoded from the posterior mean mu(x): [B, C, H, W]. Runs without gradients."""
        mu, _ = self.encode(x)
        return self.mean_image(self.decode(mu))

    def forward(self, x: Tensor) -> VAEOutput:
        """x: [B, C, H, W] -> VAEOutput(decoded, mu, logvar, z) with one reparameterized z. No loss."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return VAEOutput(self.decode(z), mu, logvar, z)
