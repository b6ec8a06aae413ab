"""Encoder and decoder networks for the VAE (MLP and convolutional).

Encoders map images [N, C, H, W] to the parameters of q(z|x): (mu [N, d], logvar [N, d]).
Decoders map latents [N, d] to per-pixel parameters [N, C, H, W] (Bernoulli logits or Gaussian means).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["GaussianEncoder", "build_encoder", "build_decoder", "conv_feature_shape"]


class GaussianEncoder(nn.Module):
    """A feature trunk followed by two linear heads: mu and logvar of a diagonal Gaussian."""

    def __init__(self, trunk: nn.Module, features: int, latent_dim: int):
        super().__init__()
        self.trunk = trunk
        self.mu_head = nn.Linear(features, latent_dim)
        self.logvar_head = nn.Linear(features, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [N, C, H, W] -> (mu [N, d], logvar [N, d])."""
        return self.heads(self.trunk(x))

    def heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """The trunk's features h: [N, F] -> (mu [N, d], logvar [N, d])."""
        return self.mu_head(h), self.logvar_head(h)


def _mlp(widths: list[int]) -> list[nn.Module]:
    """Linear + ReLU for each consecutive pair of widths."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return layers


def conv_feature_shape(image_shape: tuple[int, int, int], channels: tuple[int, ...]) -> tuple[int, int, int]:
    """Shape [C', H', W'] after the conv encoder: each layer halves H and W (stride 2).

    Raises ValueError when H or W is not divisible by 2**len(channels), since the transposed
    convolutions could then not give back the input size.
    """
    _, height, width = image_shape
    factor = 2 ** len(channels)
    if height % factor or width % factor:
        fits = max(n for n in range(len(channels) + 1) if height % 2**n == 0 and width % 2**n == 0)
        fix = (
            f"use at most {fits} conv layer(s), e.g. hidden_dims={tuple(channels[:fits])}, "
            "or architecture='mlp'"
            if fits
            else "use architecture='mlp' (or pad/crop the images to an even size)"
        )
        raise ValueError(
            f"the conv architecture halves the image {len(channels)} times (one per entry of "
            f"hidden_dims={tuple(channels)}), so height and width must be divisible by {factor}; "
            f"got image_shape={tuple(image_shape)}: {fix}."
        )
    return channels[-1], height // factor, width // factor


def build_encoder(architecture: str, image_shape: tuple[int, int, int], hidden_dims: tuple[int, ...],
                  latent_dim: int) -> GaussianEncoder:
    """The encoder network for q(z|x).

    mlp: flatten -> [Linear, ReLU] per hidden width -> mu, logvar heads (784-400-20 by default).
    conv: [Conv2d(k=4, s=2, p=1), ReLU] per channel count (28 -> 14 -> 7) -> flatten -> heads.
    """
    if architecture == "mlp":
        widths = [math.prod(image_shape), *hidden_dims]
        trunk = nn.Sequential(nn.Flatten(), *_mlp(widths))
        return GaussianEncoder(trunk, widths[-1], latent_dim)
    if architecture == "conv":
        layers: list[nn.Module] = []
        n_in = image_shape[0]
        for n_out in hidden_dims:
            layers += [nn.Conv2d(n_in, n_out, kernel_size=4, stride=2, padding=1), nn.ReLU()]
            n_in = n_out
        trunk = nn.Sequential(*layers, nn.Flatten())
        return GaussianEncoder(trunk, math.prod(conv_feature_shape(image_shape, hidden_dims)), latent_dim)
    raise ValueError(f"unknown architecture {architecture!r}; use 'mlp' or 'conv'")


def build_decoder(architecture: str, image_shape: tuple[int, int, int], hidden_dims: tuple[int, ...],
                  latent_dim: int) -> nn.Sequential:
    """The decoder network for p(x|z): z [N, d] -> per-pixel parameters [N, C, H, W].

    Mirrors the encoder. mlp: [Linear, ReLU] per hidden width (reversed) -> Linear to C*H*W.
    conv: Linear + ReLU to the encoder's feature map, then [ConvTranspose2d(k=4, s=2, p=1), ReLU]
    per channel count (reversed; 7 -> 14 -> 28), the last one to C channels with no activation.
    """
    if architecture == "mlp":
        widths = [latent_dim, *reversed(hidden_dims)]
        return nn.Sequential(
            *_mlp(widths), nn.Linear(widths[-1], math.prod(image_shape)), nn.Unflatten(1, tuple(image_shape))
        )
    if architecture == "conv":
        feature_shape = conv_feature_shape(image_shape, hidden_dims)
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, math.prod(feature_shape)),
            nn.ReLU(),
            nn.Unflatten(1, feature_shape),
        ]
        channels = [*reversed(hidden_dims), image_shape[0]]
        for i, (n_in, n_out) in enumerate(zip(channels[:-1], channels[1:])):
            layers.append(nn.ConvTranspose2d(n_in, n_out, kernel_size=4, stride=2, padding=1))
            if i < len(channels) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)
    raise ValueError(f"unknown architecture {architecture!r}; use 'mlp' or 'conv'")
