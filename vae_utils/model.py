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

__all__ = ["VAEConfig", "VAEOutput", "VAE", "check_images", "mark_checked", "add_decoder_variance",
           "decoder_log_likelihood"]

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

        if not isinstance(self.architecture, str) or self.architecture not in ARCHITECTURES:
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

        if not isinstance(self.likelihood, str) or self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.decoder_std is not None:
            if self.likelihood != "gaussian":
                raise ValueError(
                    "decoder_std applies only to likelihood='gaussian'; leave it None for 'bernoulli'"
                )
            std = self.decoder_std
            if isinstance(std, bool) or not isinstance(std, numbers.Real) or not (std > 0 and math.isfinite(std)):
                raise ValueError(
                    f"decoder_std must be a positive finite number (or None to learn it), got {std!r}"
                )
            self.decoder_std = float(self.decoder_std)
        if self.seed is not None and not (_is_int(self.seed) and -(2**63) <= self.seed < 2**64):
            raise ValueError(
                f"seed must be an int in [-2**63, 2**64) (or None for the global RNG), got {self.seed!r}"
            )
        if self.seed is not None:
            self.seed = int(self.seed)

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


# ------------------------------------------------------------------ input checks
# The value check (min and max of the batch) is a reduction and, on a GPU, a host sync. Tensors known
# to hold values in [0, 1] -- the batches ImageDataset.batches makes from uint8 pixels -- carry this
# attribute (set by ``mark_checked``), and VAE.encode skips the value check for them, so ``fit``'s
# training step never waits for the device. The mark belongs to one tensor object: anything computed
# from it (x * 255, x[:5], x.to(device)) is a new tensor and is checked again.
_CHECKED = "_vae_utils_values_checked"


def mark_checked(x: Tensor) -> Tensor:
    """Mark ``x`` as images whose values are known to be finite and in [0, 1], so ``VAE.encode``
    skips its value check (one reduction and host sync per call) for this tensor. Returns ``x``.

    ``ImageDataset.batches`` marks every batch it yields (uint8 pixels / 255 or their binarization
    are in [0, 1] by construction), which keeps the check off the training step. Mark only tensors
    you made that way yourself; changing a marked tensor in place afterwards is not seen.
    """
    setattr(x, _CHECKED, True)
    return x


def _not_a_tensor(x: Any, caller: str, expected: str) -> str:
    kind = type(x).__name__
    if type(x).__module__ == "numpy" and hasattr(x, "shape"):
        pixels = " (and 0..255 pixels with torch.as_tensor(x).float() / 255)" if "images" in expected else ""
        return (
            f"{caller} takes a torch.Tensor {expected}, got a numpy array (dtype {x.dtype}, shape "
            f"{list(x.shape)}): convert it with torch.as_tensor(x){pixels}"
        )
    if isinstance(x, (list, tuple)):
        return (
            f"{caller} takes a torch.Tensor {expected}, got a {kind}: convert it with torch.as_tensor(x) "
            "(a list of image tensors: torch.stack(x))"
        )
    return f"{caller} takes a torch.Tensor {expected}, got {kind}"


def _shape_fix(x: Tensor, image_shape: tuple[int, int, int]) -> str:
    """How to turn ``x`` into ``[B, *image_shape]``, without advice that would scramble channels."""
    c, h, w = image_shape
    shape = tuple(x.shape)
    view = f"x.view(-1, {c}, {h}, {w})"
    if shape == image_shape:
        return f"for a single image use x.unsqueeze(0), or reshape it with {view}"
    if x.dim() == 2 and shape[1] == c * h * w:
        return f"these look like flattened images: reshape them with {view}"
    if c == 1 and x.dim() == 3 and shape[1:] == (h, w):
        return f"add the channel dimension with x.unsqueeze(1) (or {view})"
    if x.dim() == 4 and shape[2:] == (h, w):  # another channel count: never reshape those
        fix = (
            f"these are {shape[1]}-channel images but this model was built for image_shape={image_shape}; "
            f"images with {shape[1]} channels need a model built with VAEConfig(image_shape=({shape[1]}, {h}, {w}))"
        )
        if c == 1 and shape[1] == 3:
            fix += ", or make them grey first with x.mean(dim=1, keepdim=True)"
        return fix
    if x.dim() == 4 and shape[1:3] == (h, w) and shape[3] == c:
        return "these are channels-last images [B, H, W, C]: move the channels with x.permute(0, 3, 1, 2)"
    return (
        f"this model was built for image_shape={image_shape}; "
        "build a VAE(VAEConfig(image_shape=...)) for images of another size"
    )


def _dtype_problem(x: Tensor, dtype: torch.dtype, caller: str, what: str = "images") -> str | None:
    if not x.is_floating_point():
        if what != "images":
            return f"{caller} expected floating-point {what}, got dtype {x.dtype}; convert with x.float()"
        fix = "x.float()" if x.dtype == torch.bool else "x.float() / 255"
        return (
            f"{caller} expected floating-point images in [0, 1], got dtype {x.dtype}; convert with {fix} "
            "(or use ImageDataset.float_images())"
        )
    if x.dtype == dtype or _autocast(x):  # under torch.autocast mixed float dtypes are expected
        return None
    if dtype == torch.float32:
        return f"{caller} got {x.dtype} {what} but the model is float32: convert them with x.float()"
    return (
        f"{caller} got {x.dtype} {what} but the model's weights are {dtype} (was .double() or .half() called "
        f"on it?): convert the model back with model.float() (vae_utils models are float32), or the {what} "
        f"with x.to({dtype})"
    )


def _autocast(x: Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled()


def _value_problem(x: Tensor, caller: str) -> str | None:
    """One reduction over x (and one host sync): None when every value is finite and in [0, 1]."""
    low, high = torch.stack(torch.aminmax(x.detach())).tolist()
    if low >= 0.0 and high <= 1.0:  # False for NaN too
        return None
    where = f"{caller} expected images with values in [0, 1]"
    if math.isnan(low) or math.isnan(high):
        count = int(torch.isnan(x).sum())
        return f"{where}, but {count} value(s) are NaN: find where they come from (torch.isnan(x).nonzero())"
    if math.isinf(low) or math.isinf(high):
        count = int(torch.isinf(x).sum())
        return f"{where}, but {count} value(s) are infinite (range [{low:g}, {high:g}])"
    if low >= 0.0 and 1.5 < high <= 255.0:
        return (
            f"{where}, got values in [{low:g}, {high:g}]: these look like 0..255 pixels; divide by 255 (x / 255)"
        )
    if low >= 0.0 and high <= 1.5:
        return (
            f"{where}, got values up to {high:g}: if they are only slightly off (e.g. after resizing or "
            "augmentation), clamp them with x.clamp(0, 1)"
        )
    if low < 0.0:
        return (
            f"{where}, got negative values (range [{low:g}, {high:g}]): if the images were normalized "
            "(e.g. transforms.Normalize), undo it (x * std + mean); otherwise rescale them into [0, 1]"
        )
    return f"{where}, got values up to {high:g}: rescale them into [0, 1] (e.g. x / x.max())"


def check_images(
    x: Any,
    image_shape: tuple[int, int, int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    values: bool = True,
    caller: str = "VAE",
) -> None:
    """Raise a clear error unless ``x`` is a batch of images a VAE with ``image_shape`` can take.

    Checks, in order: a ``torch.Tensor`` (numpy arrays and lists are refused with the conversion);
    shape ``[B, C, H, W]`` with ``(C, H, W) == image_shape`` (with the fix); at least one image;
    floating point of ``dtype`` (uint8 -> ``x.float() / 255``, float64 -> ``x.float()``); on
    ``device`` (when given); and with ``values=True``, every value finite and in [0, 1] (0..255
    pixels -> divide by 255). The value check costs one reduction and host sync; it is skipped for
    tensors marked with :func:`mark_checked`. TypeError for the type and dtype, ValueError otherwise.
    """
    c, h, w = image_shape
    expected = f"of images [B, {c}, {h}, {w}]"
    if not isinstance(x, Tensor):
        raise TypeError(_not_a_tensor(x, caller, expected))
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"{caller} expected images of shape [B, C, H, W] = [B, {c}, {h}, {w}], got {list(x.shape)}: "
            + _shape_fix(x, tuple(image_shape))
        )
    if x.shape[0] == 0:
        raise ValueError(f"{caller} got an empty batch (shape {list(x.shape)}): pass at least one image")
    problem = _dtype_problem(x, dtype, caller)
    if problem:
        raise TypeError(problem)
    if device is not None and x.device != device:
        raise ValueError(
            f"{caller} got images on {x.device} but the model is on {device}: move them with x.to(model.device)"
        )
    if values and not getattr(x, _CHECKED, False):
        problem = _value_problem(x, caller)
        if problem:
            raise ValueError(problem)


class VAEOutput(NamedTuple):
    """What VAE.forward returns (no loss)."""

    decoded: Tensor  # [B, C, H, W] Bernoulli logits or Gaussian means
    mu: Tensor  # [B, d]
    logvar: Tensor  # [B, d]
    z: Tensor  # [B, d] one reparameterized sample from q(z|x)


def add_decoder_variance(module: nn.Module, likelihood_config: Any) -> None:
    """Give ``module`` the decoder variance its config asks for (a VAE's or a conditional VAE's):
    ``decoder_logvar``, a learned per-pixel log-variance [C, H, W] (Gaussian pixels with decoder_std=None)
    or None, and ``fixed_decoder_logvar`` = 2 log(decoder_std) for a fixed standard deviation, else None."""
    config = likelihood_config
    module.fixed_decoder_logvar = None
    if config.likelihood == "gaussian" and config.decoder_std is None:
        module.decoder_logvar = nn.Parameter(torch.zeros(config.image_shape))  # learned, per pixel
    else:
        module.register_parameter("decoder_logvar", None)
        if config.likelihood == "gaussian":
            module.fixed_decoder_logvar = 2.0 * math.log(config.decoder_std)


def decoder_log_likelihood(module: nn.Module, x: Tensor, decoded: Tensor) -> Tensor:
    """log p_θ(x|z) SUMMED over pixels for a module set up by ``add_decoder_variance``: Bernoulli logits or
    Gaussian means in ``decoded``. x: [B, C, H, W]; decoded: [..., B, C, H, W] -> [..., B]."""
    if module.config.likelihood == "bernoulli":
        return bernoulli_log_likelihood(x, decoded)
    logvar = module.decoder_logvar if module.decoder_logvar is not None else module.fixed_decoder_logvar
    return gaussian_log_likelihood(x, decoded, logvar)


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
        add_decoder_variance(self, config)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ encoder
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [B, C, H, W] in [0, 1] -> (mu [B, d], logvar [B, d]) of q(z|x).

        Checks x first (``check_images``): a tensor of the model's image shape, dtype and device,
        not empty, and (unless x is marked with ``mark_checked``, as ``ImageDataset.batches``
        does) every value finite and in [0, 1] -- one reduction and host sync per call.
        """
        reference = next(self.parameters())
        check_images(x, self.config.image_shape, reference.dtype, reference.device, caller="VAE.encode")
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
        if not isinstance(z, Tensor):
            raise TypeError(_not_a_tensor(z, "VAE.decode", f"of latents [..., {d}]"))
        if z.shape[-1:] != (d,):
            raise ValueError(f"decode expected latents of shape [..., {d}], got {list(z.shape)}")
        reference = next(self.parameters())
        problem = _dtype_problem(z, reference.dtype, "VAE.decode", "latents")
        if problem:
            raise TypeError(problem)
        if z.device != reference.device:
            raise ValueError(
                f"VAE.decode got latents on {z.device} but the model is on {reference.device}: "
                "move them with z.to(model.device)"
            )
        decoded = self.decoder(z.reshape(-1, d))
        return decoded.view(*z.shape[:-1], *self.config.image_shape)

    def log_likelihood(self, x: Tensor, decoded: Tensor) -> Tensor:
        """log p(x|z) SUMMED over pixels. x: [B, C, H, W]; decoded: [..., B, C, H, W] -> [..., B]."""
        return decoder_log_likelihood(self, x, decoded)

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
