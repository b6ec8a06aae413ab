"""The conditional VAE (Sohn, Lee & Yan, 2015): encoder and decoder both see the class label y.

    q_φ(z|x, y) = N(mu(x, y), diag exp(logvar(x, y))),   p(z) = N(0, I),   p_θ(x|z, y) = Bernoulli or Gaussian

The label enters as a one-hot vector [B, num_classes], times ``label_scale``: concatenated to the
flattened image (mlp encoder), as one constant image plane per class beside the pixels (conv encoder), and concatenated
to z (both decoders). Everything else -- the reparameterization, the likelihoods, the ELBO and the
importance-weighted bound -- is the plain VAE's, with y passed along (the model protocol's condition):

    ELBO(x, y) = E_q[log p_θ(x|z, y)] - KL(q_φ(z|x, y) || p(z))  <=  log p_θ(x|y)

    model = ConditionalVAE(ConditionalVAEConfig(num_classes=10))     # mlp; architecture="conv" too
    result = vu.fit(model, train, test, vu.TrainConfig(epochs=5))      # batches of (x, y) from the data set
    images = model.sample(16, 3)                                       # [16, 1, 28, 28]: 16 dresses
    vu.save_checkpoint("runs/cvae.pt", model)                          # vu.load_checkpoint(path).model
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .evaluation import estimate_log_likelihood
from .model import VAE, VAEConfig
from .networks import build_decoder, build_encoder
from .objectives import GaussianPosterior
from .validation import check_int, check_labels, check_real

__all__ = ["ConditionalVAEConfig", "ConditionalVAE", "one_hot", "style_transfer", "log_class_posterior"]


@dataclass
class ConditionalVAEConfig(VAEConfig):
    """A ``VAEConfig`` plus ``num_classes`` (the labels are 0 .. num_classes-1; 10 for Fashion-MNIST) and
    ``label_scale``: the networks get the one-hot label times this number.

    Why a scale: Adam moves every weight by about the learning rate per step, so the first layers'
    response to the label grows ``label_scale`` times faster than with a plain one-hot. With 1 the
    networks first learn to read the class from the image (encoder) and from z (decoder), z keeps
    the class, and the decoder then half ignores y; notebook 08 measures both the mechanism (how much the
    outputs move with y, how much class z carries) and its end effect (a classifier on conditional samples).
    It changes the optimization, not the model family. Every other field means what it means for ``VAEConfig``;
    ``to_dict`` / ``from_dict`` include both.
    """

    num_classes: int = 10
    label_scale: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.num_classes = check_int("ConditionalVAEConfig", "num_classes", self.num_classes, 2,
                                     "num_classes=10 (the labels are 0 .. num_classes-1)")
        self.label_scale = check_real("ConditionalVAEConfig", "label_scale", self.label_scale, "> 0", "label_scale=5.0")


def one_hot(y: Tensor, num_classes: int) -> Tensor:
    """Integer labels y: [...] in 0 .. num_classes-1 -> float32 one-hot vectors [..., num_classes]."""
    return nn.functional.one_hot(y, num_classes).float()


class ConditionalVAE(VAE):
    """A VAE whose encoder sees (x, y) and whose decoder sees (z, y); y: int64 labels [B] in 0 .. num_classes-1.

    Every method of ``vu.VAE`` takes the labels as its ``y``: ``encode(x, y)``, ``decode(z, y)``,
    ``log_joint(x, z, y)``, ``sample(n, y)``, ``reconstruct(x, y)``, ``forward(x, y)``. Labels may be a
    tensor, a list, or one int for the whole batch; a wrong shape, a float dtype or a value outside
    0 .. num_classes-1 is refused with the fix. ``vu.fit`` and the evaluators draw (x, y) batches from the data set.
    """

    conditional: ClassVar[bool] = True
    config_class: ClassVar[type] = ConditionalVAEConfig

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def build_networks(self, config: ConditionalVAEConfig) -> tuple[nn.Module, nn.Module]:
        """The plain VAE's networks, built for the label's extra inputs (one per class): C*H*W + num_classes inputs
        (mlp) or C + num_classes channels (conv) for the encoder, d + num_classes inputs for the decoder."""
        c, h, w = config.image_shape
        k = config.num_classes
        shape = (1, 1, c * h * w + k) if config.architecture == "mlp" else (c + k, h, w)
        encoder = build_encoder(config.architecture, shape, config.hidden_dims, config.latent_dim)
        decoder = build_decoder(config.architecture, config.image_shape, config.hidden_dims, config.latent_dim + k)
        return encoder, decoder

    def label_input(self, y: Tensor) -> Tensor:
        """What the networks get for labels y: [...]: ``label_scale * one_hot(y)``, [..., num_classes]."""
        return one_hot(y, self.num_classes) * self.config.label_scale

    def posterior(self, x: Tensor, y: Tensor | None = None) -> GaussianPosterior:
        """q_φ(z|x, y) for images x: [B, C, H, W] and labels y: [B]."""
        labels = self.label_input(y)  # [B, num_classes]
        if self.config.architecture == "mlp":
            return GaussianPosterior(*self.encoder(torch.cat([x.flatten(1), labels], dim=1)))
        planes = labels[:, :, None, None].expand(-1, -1, *x.shape[2:])  # one constant image plane per class
        return GaussianPosterior(*self.encoder(torch.cat([x, planes], dim=1)))

    def decoder_output(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """z: [..., B, d] with labels y: [B] (shared by the leading sample dims) or [..., B] -> [..., B, C, H, W]."""
        d, k = self.config.latent_dim, self.num_classes
        labels = self.label_input(y).expand(*z.shape[:-1], k)
        decoded = self.decoder(torch.cat([z.reshape(-1, d), labels.reshape(-1, k)], dim=-1))
        return decoded.view(*z.shape[:-1], *self.config.image_shape)


@torch.no_grad()
def style_transfer(model: ConditionalVAE, x: Tensor, y: Any, targets: Any = None) -> Tensor:
    """Encode x with its own labels y, decode the posterior mean with each target label.

    x: [B, C, H, W]; y: [B]; targets: [T] labels (None: every class). Returns mean images
    [B, T, C, H, W]: row b is image b's code ("style") drawn as every target class.
    """
    targets = list(range(model.num_classes)) if targets is None else targets
    targets = check_labels(targets, model.num_classes, (len(targets),), model.device, "style_transfer")
    mu, _ = model.encode(x, y)  # [B, d]
    codes = mu.unsqueeze(1).expand(-1, len(targets), -1)  # [B, T, d]
    decoded = model.decode(codes.reshape(-1, mu.shape[-1]), targets.repeat(mu.shape[0]))
    return model.mean_image(decoded).view(mu.shape[0], len(targets), *model.config.image_shape)



@torch.no_grad()
def log_class_posterior(model: ConditionalVAE, x: Tensor, k: int = 100, seed: int = 0, progress: bool = True) -> Tensor:
    """The CVAE as a classifier (Bayes' rule with a uniform prior p(y) over the num_classes classes):

        log p(y|x) = log p_θ(x|y) - logsumexp_y' log p_θ(x|y'),

    each log p_θ(x|y) an importance-weighted estimate with k samples (``vu.estimate_log_likelihood``, the same
    ``seed`` for every label). x: [N, C, H, W] in [0, 1] (binary for a Bernoulli model). Returns
    [N, num_classes] on the CPU; ``.argmax(1)`` is the predicted class.
    """
    n = x.shape[0] if isinstance(x, Tensor) else 0
    labels = range(model.num_classes)
    if progress:
        from tqdm.auto import tqdm

        labels = tqdm(labels, desc="log p(x|y) for each label y", unit="label")
    columns = [estimate_log_likelihood(model, (x, torch.full((n,), label, dtype=torch.long)), k=k, seed=seed,
                                       progress=False) for label in labels]
    return torch.stack(columns, dim=1).log_softmax(dim=1)
