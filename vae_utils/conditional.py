"""The conditional VAE (Sohn, Lee & Yan, 2015): encoder and decoder both see the class label y.

    q_φ(z|x, y) = N(mu(x, y), diag exp(logvar(x, y))),   p(z) = N(0, I),   p_θ(x|z, y) = Bernoulli or Gaussian

The label enters as a one-hot vector [B, K] (K = ``num_classes``), times ``label_scale``: concatenated to the flattened image
(mlp encoder), as K constant image planes beside the pixels (conv encoder), and concatenated to z
(both decoders). Everything else -- the reparameterization, the likelihoods, the ELBO and the
importance-weighted bound -- is the plain VAE's, with y passed along:

    ELBO(x, y) = E_q[log p_θ(x|z, y)] - KL(q_φ(z|x, y) || p(z))  <=  log p_θ(x|y)

    model = ConditionalVAE(ConditionalVAEConfig(num_classes=10))          # mlp; architecture="conv" too
    result = fit_conditional(model, train, test, vu.TrainConfig(epochs=5))  # vu.train_epoch on (x, y) pairs
    images = model.sample(16, labels=3)                                     # [16, 1, 28, 28]: 16 dresses
    save_conditional("runs/cvae.pt", model, history=result.history)       # load_conditional(path).model

Why not ``vu.save_checkpoint``: it rebuilds a plain ``VAE`` from the stored ``VAEConfig`` (which has no
``num_classes``), so a conditional model cannot go through it; ``save_conditional`` writes the same
kind of ``weights_only`` file with its own format tag.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import Checkpoint, CheckpointError, data_key
from .data import ImageDataset
from .device import pick_device, seed_everything
from .evaluation import EVAL_BINARIZE_SEED, mean_elbo_terms
from .model import VAEConfig, VAEOutput, add_decoder_variance, check_images, decoder_log_likelihood
from .networks import build_decoder, build_encoder
from .objectives import (
    ELBO,
    elbo_terms,
    gaussian_kl,
    importance_weighted_bound,
    log_standard_normal,
    reparameterize,
    standard_normal,
)
from .training import FitResult, History, TrainConfig, default_optimizer, ticking, train_epoch

__all__ = [
    "ConditionalVAEConfig",
    "ConditionalVAE",
    "one_hot",
    "labelled_batches",
    "conditional_elbo",
    "conditional_objective",
    "evaluate_conditional_elbo",
    "estimate_conditional_log_likelihood",
    "fit_conditional",
    "save_conditional",
    "load_conditional",
    "load_or_train_conditional",
    "style_transfer",
    "log_class_posterior",
    "class_explorer",
    "style_explorer",
]

FORMAT = "vae_utils.conditional"
VERSION = 1


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass
class ConditionalVAEConfig(VAEConfig):
    """A ``VAEConfig`` plus ``num_classes`` K (the labels are 0 .. K-1; 10 for Fashion-MNIST) and
    ``label_scale``: the networks get the one-hot label times this number.

    Why a scale: Adam moves every weight by about the learning rate per step, so the first layers'
    response to the label grows ``label_scale`` times faster than with a plain one-hot. With 1 the
    networks first learn to read the class from the image (encoder) and from z (decoder), z keeps
    the class, and the decoder then half ignores y; notebook 08 measures both (the classifier's
    accuracy on conditional samples). It changes the optimization, not the model family.
    Every other field means what it means for ``VAEConfig``; ``to_dict`` / ``from_dict`` include both.
    """

    num_classes: int = 10
    label_scale: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _is_int(self.num_classes) or self.num_classes < 2:
            raise ValueError(
                f"num_classes must be an int >= 2 (the labels are 0 .. num_classes-1), got {self.num_classes!r}; "
                "Fashion-MNIST has num_classes=10"
            )
        self.num_classes = int(self.num_classes)
        scale = self.label_scale
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"label_scale must be a positive finite number (5.0 by default), got {scale!r}")
        self.label_scale = float(scale)


def one_hot(y: Tensor, num_classes: int) -> Tensor:
    """Integer labels y: [...] in 0 .. num_classes-1 -> float32 one-hot vectors [..., num_classes]."""
    return nn.functional.one_hot(y, num_classes).float()


# ------------------------------------------------------------------------------------ networks
class _Encoder(nn.Module):
    """q_φ(z|x, y): x [B, C, H, W], y_onehot [B, K] -> (mu [B, d], logvar [B, d]).

    mlp: the plain VAE's encoder built for C*H*W + K inputs, fed [flatten(x), y_onehot].
    conv: the plain VAE's conv encoder built for C + K channels, fed x with K constant label planes.
    """

    def __init__(self, config: ConditionalVAEConfig):
        super().__init__()
        c, h, w = config.image_shape
        k = config.num_classes
        self.architecture = config.architecture
        shape = (1, 1, c * h * w + k) if config.architecture == "mlp" else (c + k, h, w)
        self.net = build_encoder(config.architecture, shape, config.hidden_dims, config.latent_dim)

    def forward(self, x: Tensor, y_onehot: Tensor) -> tuple[Tensor, Tensor]:
        if self.architecture == "mlp":
            return self.net(torch.cat([x.flatten(1), y_onehot], dim=1))
        planes = y_onehot[:, :, None, None].expand(-1, -1, *x.shape[2:])
        return self.net(torch.cat([x, planes], dim=1))


class _Decoder(nn.Module):
    """p_θ(x|z, y): z [N, d], y_onehot [N, K] -> per-pixel parameters [N, C, H, W] (the plain VAE's
    decoder built for d + K inputs, fed [z, y_onehot])."""

    def __init__(self, config: ConditionalVAEConfig):
        super().__init__()
        self.net = build_decoder(
            config.architecture, config.image_shape, config.hidden_dims, config.latent_dim + config.num_classes
        )

    def forward(self, z: Tensor, y_onehot: Tensor) -> Tensor:
        return self.net(torch.cat([z, y_onehot], dim=-1))


# ------------------------------------------------------------------------------------ the model
class ConditionalVAE(nn.Module):
    """A VAE whose encoder sees (x, y) and whose decoder sees (z, y); y: int64 labels [B] in 0 .. K-1.

    The methods mirror ``vu.VAE`` with the labels added: ``encode(x, y)``, ``decode(z, y)``,
    ``log_likelihood(x, decoded)``, ``log_joint(x, y, z)``, ``sample(n, labels)``,
    ``reconstruct(x, y)``, ``forward(x, y)``. Labels may be a tensor, a list, or one int for the whole
    batch; a wrong shape, a float dtype or a value outside 0 .. K-1 is refused with the fix.
    """

    def __init__(self, config: ConditionalVAEConfig | None = None):
        super().__init__()
        config = ConditionalVAEConfig() if config is None else config
        if not isinstance(config, ConditionalVAEConfig):
            hint = (
                "; build one with ConditionalVAEConfig(num_classes=10, **other fields)"
                if isinstance(config, VAEConfig)
                else ""
            )
            raise TypeError(f"ConditionalVAE takes a ConditionalVAEConfig, got {type(config).__name__}{hint}")
        self.config = config
        with torch.random.fork_rng(devices=[], enabled=config.seed is not None):
            if config.seed is not None:
                torch.manual_seed(config.seed)
            self.encoder = _Encoder(config)
            self.decoder = _Decoder(config)
        add_decoder_variance(self, config)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    # ------------------------------------------------------------------ labels
    def check_labels(self, y: Any, shape: tuple[int, ...], caller: str) -> Tensor:
        """y as int64 labels of ``shape`` on the model's device, or a clear error.

        y: an int (the same label everywhere), a list, or an integer tensor of ``shape`` with values
        in 0 .. K-1.
        """
        k = self.config.num_classes
        if _is_int(y):
            y = torch.full(shape, int(y), dtype=torch.long)
        elif isinstance(y, (list, tuple)):
            y = torch.as_tensor(y)
        elif not isinstance(y, Tensor):
            raise TypeError(
                f"{caller}: labels must be an int, a list of ints or an integer tensor {list(shape)}, "
                f"got {type(y).__name__}"
            )
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"{caller}: labels must be integer class indices, got dtype {y.dtype}; use y.long()")
        if tuple(y.shape) != tuple(shape):
            raise ValueError(
                f"{caller}: expected labels of shape {list(shape)} (one per image or code), got {list(y.shape)}"
            )
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
            raise ValueError(
                f"{caller}: labels must be in 0 .. {k - 1} (num_classes={k}), got values from "
                f"{int(y.min())} to {int(y.max())}"
            )
        return y.to(self.device, torch.long)

    def label_input(self, y: Tensor) -> Tensor:
        """What the networks get for checked labels y: [...]: ``label_scale * one_hot(y)``, [..., K]."""
        return one_hot(y, self.num_classes) * self.config.label_scale

    # ------------------------------------------------------------------ encoder
    def encode(self, x: Tensor, y: Any) -> tuple[Tensor, Tensor]:
        """x: [B, C, H, W] in [0, 1], y: [B] -> (mu [B, d], logvar [B, d]) of q_φ(z|x, y).

        x is checked like ``VAE.encode`` (``vu.model.check_images``; batches from
        ``labelled_batches`` skip the value check, as ``ImageDataset.batches`` do).
        """
        reference = next(self.parameters())
        check_images(x, self.config.image_shape, reference.dtype, reference.device, caller="ConditionalVAE.encode")
        y = self.check_labels(y, (x.shape[0],), "ConditionalVAE.encode")
        return self.encoder(x, self.label_input(y))

    def reparameterize(
        self, mu: Tensor, logvar: Tensor, n_samples: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """z = mu + exp(logvar / 2) * eps: [B, d], or [S, B, d] with n_samples=S (as ``VAE.reparameterize``)."""
        if n_samples is not None and not (_is_int(n_samples) and n_samples >= 1):
            raise ValueError(f"n_samples must be a positive int or None, got {n_samples!r}")
        return reparameterize(mu, logvar, n_samples, generator)

    # ------------------------------------------------------------------ decoder
    def decode(self, z: Tensor, y: Any) -> Tensor:
        """z: [..., B, d], y: [B] (or one int) -> decoded [..., B, C, H, W] (logits or Gaussian means).

        Leading sample dimensions of z share the labels: z [S, B, d] with y [B] decodes every sample of
        example b with label y[b]. A single code z [d] takes an int label.
        """
        d = self.config.latent_dim
        if not isinstance(z, Tensor):
            raise TypeError(f"ConditionalVAE.decode takes a tensor of latents [..., B, {d}], got {type(z).__name__}")
        if z.shape[-1:] != (d,):
            raise ValueError(f"ConditionalVAE.decode expected latents of shape [..., B, {d}], got {list(z.shape)}")
        reference = next(self.parameters())
        if z.dtype != reference.dtype or z.device != reference.device:
            raise ValueError(
                f"ConditionalVAE.decode got {z.dtype} latents on {z.device}; the model is {reference.dtype} on "
                f"{reference.device}: convert them with z.to(model.device, {reference.dtype})"
            )
        batch = z.shape[:-1] if _is_int(y) else z.shape[-2:-1]
        y = self.check_labels(y, tuple(batch), "ConditionalVAE.decode")
        y_onehot = self.label_input(y).expand(*z.shape[:-1], self.num_classes)
        k = self.num_classes
        decoded = self.decoder(z.reshape(-1, d), y_onehot.reshape(-1, k))
        return decoded.view(*z.shape[:-1], *self.config.image_shape)

    def log_likelihood(self, x: Tensor, decoded: Tensor) -> Tensor:
        """log p_θ(x|z, y) SUMMED over pixels. x: [B, C, H, W]; decoded: [..., B, C, H, W] -> [..., B]."""
        return decoder_log_likelihood(self, x, decoded)

    def log_joint(self, x: Tensor, y: Any, z: Tensor) -> Tensor:
        """log p_θ(x, z|y) = log p_θ(x|z, y) + log p(z). x: [B, C, H, W]; y: [B]; z: [S, B, d] -> [S, B]."""
        return self.log_likelihood(x, self.decode(z, y)) + log_standard_normal(z)

    def mean_image(self, decoded: Tensor) -> Tensor:
        """sigmoid(logits) (Bernoulli) or the means (Gaussian): the image to show. Shape kept."""
        return torch.sigmoid(decoded) if self.config.likelihood == "bernoulli" else decoded

    # ------------------------------------------------------------------ whole model
    @torch.no_grad()
    def sample(self, n: int, labels: Any, generator: torch.Generator | None = None) -> Tensor:
        """Mean images p_θ(x|z, y) of n codes z ~ p(z) with the given labels: [n, C, H, W].

        labels: one int (all n images of that class) or n labels [n]. Runs without gradients.
        """
        if not _is_int(n) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        y = self.check_labels(labels, (n,), "ConditionalVAE.sample")
        z = standard_normal((n, self.config.latent_dim), next(self.parameters()), generator)
        return self.mean_image(self.decode(z, y))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Any) -> Tensor:
        """Mean image decoded from the posterior mean mu(x, y) with the same labels: [B, C, H, W]."""
        mu, _ = self.encode(x, y)
        return self.mean_image(self.decode(mu, y))

    def forward(self, x: Tensor, y: Any) -> VAEOutput:
        """x: [B, C, H, W], y: [B] -> VAEOutput(decoded, mu, logvar, z) with one reparameterized z."""
        mu, logvar = self.encode(x, y)
        z = self.reparameterize(mu, logvar)
        return VAEOutput(self.decode(z, y), mu, logvar, z)


@torch.no_grad()
def style_transfer(model: ConditionalVAE, x: Tensor, y: Any, targets: Any = None) -> Tensor:
    """Encode x with its own labels y, decode the posterior mean with each target label.

    x: [B, C, H, W]; y: [B]; targets: [T] labels (None: all K classes). Returns mean images
    [B, T, C, H, W]: row b is image b's code ("style") drawn as every target class.
    """
    targets = list(range(model.num_classes)) if targets is None else targets
    targets = model.check_labels(targets, (len(targets),), "style_transfer")
    mu, _ = model.encode(x, y)  # [B, d]
    codes = mu.unsqueeze(1).expand(-1, len(targets), -1)  # [B, T, d]
    decoded = model.decode(codes.reshape(-1, mu.shape[-1]), targets.repeat(mu.shape[0]))
    return model.mean_image(decoded).view(mu.shape[0], len(targets), *model.config.image_shape)


# ------------------------------------------------------------------------------------ data
def _generator_on(device: torch.device, generator: torch.Generator | None) -> torch.Generator | None:
    """``generator`` if it lives on ``device``; else one there seeded from it (as ``ImageDataset.batches``)."""
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)


def labelled_batches(
    data: ImageDataset,
    batch_size: int,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    binarize: bool = False,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x, y)``: x float32 [B, C, H, W] in [0, 1], y int64 [B], one pass over ``data``.

    The same semantics as ``data.batches``: one ``randperm`` from ``generator`` for the order (none
    with ``shuffle=False``), then, with ``binarize=True``, every pixel redrawn as Bernoulli(gray)
    each time it is served; with the same generator state the images are exactly those
    ``data.batches`` yields, and y holds their labels. The pairs go straight into
    ``vu.train_epoch(model, labelled_batches(...), optimizer, conditional_objective())``.
    """
    if not isinstance(data, ImageDataset):
        raise TypeError(f"labelled_batches takes an ImageDataset, got {type(data).__name__}; load one with vu.load_dataset")
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be True or False, got {shuffle!r}.")
    generator = _generator_on(data.device, generator)
    if shuffle:
        order = torch.randperm(len(data), device=data.device, generator=generator)
        data = data.subset(order)
    images = data.batches(batch_size, shuffle=False, generator=generator, binarize=binarize, drop_last=drop_last)
    return zip(images, data.labels.split(int(batch_size)))


# ------------------------------------------------------------------------------------ objectives
def conditional_elbo(
    model: ConditionalVAE,
    x: Tensor,
    y: Any,
    beta: float = 1.0,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
) -> ELBO:
    """The ELBO of log p_θ(x|y) per example (maximize): fields [B], in nats.

    reconstruction = E_q[log p_θ(x|z, y)], the MEAN over n_samples reparameterized z ~ q_φ(z|x, y),
    SUMMED over pixels; kl = KL(q_φ(z|x, y) || p(z)) in closed form, SUMMED over latent dims;
    objective = reconstruction - beta * kl. The training loss is ``-objective.mean()`` (nats per example).
    """
    mu, logvar = model.encode(x, y)
    z = model.reparameterize(mu, logvar, n_samples=n_samples, generator=generator)  # [S, B, d]
    reconstruction = model.log_likelihood(x, model.decode(z, y)).mean(0)  # [B]
    return elbo_terms(reconstruction, gaussian_kl(mu, logvar), beta)


def conditional_objective(beta: float = 1.0) -> Callable[[ConditionalVAE, tuple[Tensor, Tensor]], ELBO]:
    """``objective(model, (x, y)) -> ELBO`` for ``vu.train_epoch``, whose batches are (x, y) pairs.

    ``vu.train_epoch`` minimizes ``-objective(model, batch).objective.mean()``.
    """
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (beta >= 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")

    def objective(model: ConditionalVAE, batch: tuple[Tensor, Tensor]) -> ELBO:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(
                "conditional_objective expects (x, y) batches: pass labelled_batches(data, ...) to train_epoch, "
                f"not {type(batch).__name__}"
            )
        x, y = batch
        return conditional_elbo(model, x, y, beta=beta)

    return objective


def _eval_pairs(data: Any, batch_size: int, binarize_seed: int | None, device) -> tuple[int, Iterator]:
    """(N, batches of (x, y) on ``device``) from an ImageDataset or an (x, y) pair of tensors."""
    if isinstance(data, ImageDataset):
        data = data.to(device)
        if binarize_seed is not None:
            data = data.binarized(binarize_seed)
        return len(data), labelled_batches(data, batch_size, shuffle=False)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.dtype == torch.uint8:
            x = x.float() / 255
        if x.shape[:1] != y.shape[:1]:
            raise ValueError(f"images and labels differ in number: {list(x.shape)} and {list(y.shape)}")
        return len(x), zip(x.to(device).split(batch_size), y.to(device).split(batch_size))
    raise TypeError(f"expected an ImageDataset or a pair (x [N, C, H, W], y [N]), got {type(data).__name__}")


@torch.no_grad()
def evaluate_conditional_elbo(
    model: ConditionalVAE,
    data: ImageDataset | tuple[Tensor, Tensor],
    batch_size: int = 1000,
    binarize_seed: int | None = EVAL_BINARIZE_SEED,
    seed: int = 0,
) -> dict[str, float]:
    """Mean ELBO, reconstruction and KL per example (nats; one sample each, from a CPU generator seeded
    with ``seed``, so the same on every device) and n.

    data: an ImageDataset (binarized first with ``binarize_seed``, like ``vu.evaluate_elbo``), or
    (x [N, C, H, W] in [0, 1], y [N]) used as given.
    """
    _, pairs = _eval_pairs(data, batch_size, binarize_seed, model.device)
    return mean_elbo_terms(model, pairs, lambda xy, generator: conditional_elbo(model, *xy, generator=generator),
                           seed, "evaluate_conditional_elbo")


@torch.inference_mode()
def estimate_conditional_log_likelihood(
    model: ConditionalVAE,
    data: ImageDataset | tuple[Tensor, Tensor],
    k: int = 5000,
    batch_size: int = 100,
    chunk_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    binarize_seed: int | None = EVAL_BINARIZE_SEED,
) -> Tensor:
    """Importance-weighted estimate of log p_θ(x|y) per example, with q_φ(z|x, y) as proposal: [N] on the CPU.

    ``vu.objectives.importance_weighted_bound`` with ``log_joint = model.log_joint(x, y, .)``; K = 1
    is the ELBO. chunk_size: samples per step (None: about 1M decoded floats per step).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (importance samples per example) must be an int >= 1, got {k!r}.")
    device = model.device
    n, pairs = _eval_pairs(data, batch_size, binarize_seed, device)
    chunk_size = chunk_size or max(1, min(k, 2**20 // (batch_size * math.prod(model.config.image_shape))))
    generator = torch.Generator(device=device).manual_seed(seed)
    bar = _bar(n, f"log p(x|y), K={k}") if progress else None
    was_training, estimates = model.training, []
    model.eval()
    try:
        for x, y in pairs:
            mu, logvar = model.encode(x, y)
            log_joint = lambda x_, z_, y=y: model.log_joint(x_, y, z_)  # noqa: E731
            estimates.append(importance_weighted_bound(log_joint, x, mu, logvar, k, chunk_size, generator))
            if bar is not None:
                bar.update(x.shape[0])
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return torch.cat(estimates).cpu()


@torch.no_grad()
def log_class_posterior(model: ConditionalVAE, x: Tensor, k: int = 100, seed: int = 0, progress: bool = True) -> Tensor:
    """The CVAE as a classifier (Bayes' rule with a uniform prior p(y) = 1/K over the K classes):

        log p(y|x) = log p_θ(x|y) - logsumexp_y' log p_θ(x|y'),

    each log p_θ(x|y) an importance-weighted estimate with k samples (the same ``seed`` for every
    label). x: [N, C, H, W] in [0, 1] (binary for a Bernoulli model). Returns [N, K] on the CPU;
    ``.argmax(1)`` is the predicted class.
    """
    n = x.shape[0] if isinstance(x, Tensor) else 0
    bar = _bar(model.num_classes, "log p(x|y) for each label y", "label") if progress else None
    columns = []
    for label in range(model.num_classes):
        y = torch.full((n,), label, dtype=torch.long)
        columns.append(estimate_conditional_log_likelihood(model, (x, y), k=k, seed=seed, progress=False))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return torch.stack(columns, dim=1).log_softmax(dim=1)


def _bar(total: int, desc: str, unit: str = "img"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


# ------------------------------------------------------------------------------------ training
def fit_conditional(
    model: ConditionalVAE,
    train_data: ImageDataset,
    test_data: ImageDataset | None = None,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> FitResult:
    """Train a ConditionalVAE: ``config.epochs`` calls of ``vu.train_epoch`` on ``labelled_batches``.

    Uses config's epochs, batch_size, lr, beta, seed, binarize (dynamic, as ``vu.fit``) and device;
    objective="iw" and kl_warmup_epochs are not supported here (a ValueError says so). The history
    has ``vu.fit``'s fields; test_* is the conditional test ELBO (binarized with seed 0) or None;
    ``seconds`` is each epoch's wall time (test evaluation included). Returns ``vu.FitResult``.
    """
    config = TrainConfig() if config is None else config
    if not isinstance(model, ConditionalVAE):
        raise TypeError(f"fit_conditional trains a ConditionalVAE, got {type(model).__name__}; use vu.fit for a VAE")
    if config.objective != "elbo" or config.kl_warmup_epochs:
        raise ValueError("fit_conditional trains on the ELBO without warm-up: use TrainConfig(objective='elbo', "
                         "kl_warmup_epochs=0)")
    for name, data in (("train_data", train_data), ("test_data", test_data)):
        if data is not None and (not isinstance(data, ImageDataset) or len(data) == 0):
            raise ValueError(f"fit_conditional: {name} must be a non-empty ImageDataset")
    device = pick_device(config.device)
    seed_everything(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    model.to(device)
    train_data = train_data.to(device)
    optimizer = default_optimizer(model, config.lr)
    objective, history = conditional_objective(config.beta), History()
    steps = math.ceil(len(train_data) / config.batch_size)
    bar = _bar(config.epochs * steps, "training (conditional)", "batch") if progress else None
    try:
        for epoch in range(1, config.epochs + 1):
            start = time.perf_counter()
            batches = labelled_batches(train_data, config.batch_size, generator=generator, binarize=config.binarize)
            sums = train_epoch(model, ticking(batches, bar, every=1), optimizer, objective)
            sums = {k: float(v) for k, v in sums.items()}
            test = evaluate_conditional_elbo(model, test_data, config.eval_batch_size) if test_data is not None else {}
            n = sums["n"]
            history.append(
                epoch=epoch, train_elbo=sums["elbo"] / n, train_reconstruction=sums["reconstruction"] / n,
                train_kl=sums["kl"] / n, train_objective=sums["objective"] / n, test_elbo=test.get("elbo"),
                test_reconstruction=test.get("reconstruction"), test_kl=test.get("kl"), beta=config.beta,
                seconds=time.perf_counter() - start,
            )
            if not math.isfinite(sums["objective"]):
                raise RuntimeError(f"fit_conditional: the loss became NaN or inf in epoch {epoch}; lower lr "
                                   f"(lr={config.lr:g})")
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    return FitResult(model, history, optimizer, False)


# ------------------------------------------------------------------------------------ checkpoints
def save_conditional(
    path: str | os.PathLike,
    model: ConditionalVAE,
    history: History | None = None,
    train_config: TrainConfig | None = None,
    metadata: dict | None = None,
    train_data: ImageDataset | None = None,
) -> Path:
    """Write a ConditionalVAE (config, weights on the CPU, history, train config, plain metadata) to
    ``path`` so that ``torch.load(weights_only=True)`` reads it; written to a temporary file first and
    renamed, so an interrupted save never leaves half a file. ``train_data``: its name and size go
    into ``metadata["train_data"]`` (``load_or_train_conditional`` compares them). Returns the path."""
    if not isinstance(model, ConditionalVAE):
        raise TypeError(f"save_conditional saves a ConditionalVAE, got {type(model).__name__}; "
                        "use vu.save_checkpoint for a VAE")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"train_data": data_key(train_data)} if train_data is not None else {}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": model.config.to_dict(),
        "model_state": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "history": history.to_dict() if history is not None else None,
        "train_config": train_config.to_dict() if train_config is not None else None,
        "metadata": {**(metadata or {}), **extra},
    }
    tmp = path.with_name(f".{path.name}.saving-{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_conditional(path: str | os.PathLike, device: str | torch.device | None = None) -> Checkpoint:
    """Load a file written by ``save_conditional`` (``weights_only``): a ``vu.checkpoint.Checkpoint``
    whose ``model`` is a ConditionalVAE on ``device`` (None: cuda, mps, then cpu), in eval mode.
    Raises ``vu.CheckpointError`` for a missing, corrupt or foreign file, or weights that do not fit."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No conditional checkpoint at {path}; write one with save_conditional(path, model)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- torch.load fails in many ways on garbage
        raise CheckpointError(f"Cannot read {path} as a checkpoint ({type(err).__name__}); delete it and train again") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        hint = " (a plain VAE: use vu.load_checkpoint)" if found == "vae_utils.checkpoint" else ""
        raise CheckpointError(f"{path} is not a save_conditional file: format {found!r}{hint}")
    try:
        model = ConditionalVAE(ConditionalVAEConfig.from_dict(payload["model_config"]))
        model.load_state_dict(payload["model_state"])
        history = History.from_dict(payload["history"]) if payload["history"] is not None else None
        train_config = TrainConfig.from_dict(payload["train_config"]) if payload["train_config"] is not None else None
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} does not fit its config: {str(err).splitlines()[0]}") from None
    model.to(pick_device(device)).eval()
    return Checkpoint(model, history, train_config, None, dict(payload.get("metadata") or {}))


def load_or_train_conditional(
    path: str | os.PathLike,
    model_config: ConditionalVAEConfig,
    train_config: TrainConfig,
    train_data: ImageDataset,
    test_data: ImageDataset | None = None,
    progress: bool = True,
) -> FitResult:
    """The conditional ``vu.load_or_train``: load ``path`` if it holds a model trained with these
    configs (the device aside) on this training set (name and size); otherwise train with
    ``fit_conditional`` and save there. Returns a ``vu.FitResult``."""
    path = Path(path)
    device = pick_device(train_config.device)
    if path.is_file():
        try:
            found = load_conditional(path, device)
        except CheckpointError:
            found = None
        same = found is not None and found.train_config is not None and (
            found.model.config.to_dict() == model_config.to_dict()
            and {**found.train_config.to_dict(), "device": None} == {**train_config.to_dict(), "device": None}
            and found.metadata.get("train_data") == data_key(train_data)
        )
        if same:
            return FitResult(found.model, found.history, default_optimizer(found.model, train_config.lr), False)
    result = fit_conditional(ConditionalVAE(model_config), train_data, test_data, train_config, progress)
    save_conditional(path, result.model, result.history, train_config, train_data=train_data)
    return result


# ------------------------------------------------------------------------------------ widgets
def _png(images: Tensor, scale: int) -> bytes:
    """Mean images [T, C, H, W] in [0, 1] -> one PNG, the images side by side (1-pixel white gaps)."""
    from .widgets import image_to_png

    c, h, w = images.shape[1:]
    row = torch.ones(c, h, images.shape[0] * (w + 1) - 1)
    for i, image in enumerate(images.detach().cpu().float()):
        row[:, :, i * (w + 1) : i * (w + 1) + w] = image
    return image_to_png(row, scale)


def class_explorer(model: ConditionalVAE, classes: list[str] | None = None, dims: int = 5,
                   span: float = 3.0, scale: int = 6):
    """A widget: class buttons (ToggleButtons), ``dims`` latent sliders (FloatSlider, the other
    dimensions stay 0) and the decoded mean image of p_θ(x|z, y) (an ipywidgets Image fed PNG bytes).

    Works with ipywidgets 7 and 8 (core widgets only). Returns a VBox with attributes ``buttons``,
    ``sliders``, ``image`` and ``update()`` (redraws; called on every change).
    """
    import ipywidgets as widgets

    classes = classes or [str(k) for k in range(model.num_classes)]
    dims = min(dims, model.config.latent_dim)
    buttons = widgets.ToggleButtons(options=[(name, k) for k, name in enumerate(classes)], value=0,
                                    style={"button_width": "80px"})
    sliders = [widgets.FloatSlider(value=0.0, min=-span, max=span, step=0.05, description=f"z{i + 1}",
                                   continuous_update=True, readout_format=".2f") for i in range(dims)]
    image = widgets.Image(format="png", width=28 * scale, height=28 * scale)

    @torch.no_grad()
    def update(_=None):
        z = torch.zeros(1, model.config.latent_dim, device=model.device)
        z[0, :dims] = torch.tensor([s.value for s in sliders])
        image.value = _png(model.mean_image(model.decode(z, [buttons.value])), scale)

    for control in [buttons, *sliders]:
        control.observe(update, names="value")
    update()
    box = widgets.VBox([buttons, widgets.HBox([widgets.VBox(sliders), image])])
    box.buttons, box.sliders, box.image, box.update = buttons, sliders, image, update
    return box


def style_explorer(model: ConditionalVAE, x: Tensor, y: Any, classes: list[str] | None = None, scale: int = 3):
    """A widget: pick one of the images x [B, C, H, W] (labels y [B]) with a Dropdown; shows it and its
    code (the posterior mean of q_φ(z|x, y)) decoded with each of the K labels (``style_transfer``).

    Returns a VBox with attributes ``picker``, ``image`` and ``update()``.
    """
    import ipywidgets as widgets

    classes = classes or [str(k) for k in range(model.num_classes)]
    rows = style_transfer(model, x, y)  # [B, K, C, H, W]
    labels = model.check_labels(y, (x.shape[0],), "style_explorer").tolist()
    picker = widgets.Dropdown(options=[(f"test image {i} ({classes[c]})", i) for i, c in enumerate(labels)],
                              value=0, description="image")
    image = widgets.Image(format="png")
    caption = widgets.HTML()

    def update(_=None):
        i = picker.value
        image.value = _png(torch.cat([x[i : i + 1].cpu(), torch.ones_like(x[i : i + 1].cpu()), rows[i].cpu()]), scale)
        caption.value = "input, gap, then decoded as: " + ", ".join(classes)

    picker.observe(update, names="value")
    update()
    box = widgets.VBox([picker, image, caption])
    box.picker, box.image, box.update = picker, image, update
    return box
