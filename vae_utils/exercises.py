"""Checkers for the four pieces a reader writes in notebook 04: the encoder, the decoder, the loss and
the training loop.

Each checker compares what the reader's code DOES with the library, never layer names (the library's weights
go into the reader's ``nn.Linear`` layers, found by their shapes), prints one line -- a pass, or what is wrong
in plain words, never the reference code -- and returns a ``vu.tutorial.Verdict`` (true on a pass)::

    vu.exercises.check_encoder(Encoder)                  # the class, built here as Encoder(latent_dim)
    vu.exercises.check_decoder(Decoder)
    vu.exercises.check_loss(negative_elbo)               # negative_elbo(x, encoder, decoder, generator=None)
    vu.exercises.check_training_loop(train_one_epoch, train.subset(1024))
    model = vu.exercises.as_vae(encoder, decoder)        # the reader's trained weights in a vu.VAE
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import ImageDataset
from .model import VAE, VAEConfig
from .objectives import bernoulli_log_likelihood, gaussian_kl, negative_elbo_loss, vae_elbo
from .tutorial import Verdict

__all__ = ["check_encoder", "check_decoder", "check_loss", "check_training_loop", "as_vae"]

PIXELS = 784  # a Fashion-MNIST image, [1, 28, 28]


class Fault(Exception):
    """What is wrong with the reader's piece, in plain words (the message the checker prints)."""


def _verdict(name: str, check: Callable[[], str]) -> Verdict:
    """Run a checker's body (a Fault is its failure) in a forked random state: checking changes no random number."""
    try:
        with torch.random.fork_rng():
            detail = check()
    except Fault as fault:
        print(f"{name}: not yet -- {fault}")
        return Verdict(False)
    print(f"{name}: correct -- {detail}")
    return Verdict(True)


def _reference_vae(latent_dim: int, hidden: int, seed: int = 0) -> VAE:
    return VAE(VAEConfig(latent_dim=latent_dim, hidden_dims=(hidden,), seed=seed))


def _library_linears(vae: VAE) -> dict[str, nn.Linear]:
    """The reference model's layers by role: trunk, mu, logvar (encoder); hidden, logits (decoder)."""
    encoder_trunk, decoder = vae.encoder.trunk, list(vae.decoder)
    return {"trunk": encoder_trunk[1], "mu": vae.encoder.mu_head, "logvar": vae.encoder.logvar_head,
            "hidden": decoder[0], "logits": decoder[2]}


def _images(n: int, seed: int) -> Tensor:  # n binary images [n, 1, 28, 28]
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(seed))


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _shapes(layers: list[nn.Linear]) -> str:
    return ", ".join(f"{m.in_features} -> {m.out_features}" for m in layers) or "none"


def _build(cls: Any, what: str, *args: int) -> nn.Module:
    try:
        module = cls(*args)
    except Exception as err:  # noqa: BLE001 -- whatever the reader's code raises is the message
        raise Fault(f"{what}({', '.join(map(str, args))}) raised {type(err).__name__}: {err}") from None
    if not isinstance(module, nn.Module):
        raise Fault(f"{what}(...) built a {type(module).__name__}, not a torch.nn.Module")
    if not _linears(module):
        raise Fault(f"{what} has no layers yet: create them in __init__ (nn.Linear, nn.ReLU, ...)")
    return module


def _call(module: nn.Module, what: str, *args: Tensor) -> Any:
    try:
        out = module(*args)
    except NotImplementedError:
        raise Fault(f"{what} has no forward method yet: write it") from None
    except Exception as err:  # noqa: BLE001
        shapes = ", ".join(str(list(a.shape)) for a in args)
        raise Fault(f"calling {what} on {shapes} raised {type(err).__name__}: {err}") from None
    if out is None:
        raise Fault(f"{what} returned None: write the body of forward and return its result")
    return out


@torch.no_grad()
def _copy(source: nn.Linear, target: nn.Linear) -> None:
    target.weight.copy_(source.weight)
    if target.bias is not None and source.bias is not None:
        target.bias.copy_(source.bias)


def _close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def _gradient_reaches_every_layer(module: nn.Module, value: Tensor, what: str) -> None:
    module.zero_grad(set_to_none=True)
    value.backward()
    dead = [name for name, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    if dead:
        raise Fault(f"no gradient reaches {', '.join(dead)} in {what}: every layer must take part in forward")


def check_encoder(encoder_class: Any, latent_dim: int = 20, hidden: int = 400) -> Verdict:
    """Check a reader's ``Encoder``: ``Encoder(latent_dim, hidden)`` maps x [B, 1, 28, 28] to (mu, logvar), each
    [B, d], as the library's encoder does on the same weights. Prints one line; returns a Verdict."""
    return _verdict("Encoder", lambda: _encoder_body(encoder_class, latent_dim, hidden))


def _encoder_body(encoder_class, latent_dim: int, hidden: int) -> str:
    encoder = _build(encoder_class, "Encoder", latent_dim, hidden)
    trunk, heads = _encoder_layers(encoder, latent_dim, hidden)
    library = _library_linears(_reference_vae(latent_dim, hidden))
    x = _images(5, seed=1)
    reference = _library_encoder_outputs(library, x, relu=True)
    _copy(library["trunk"], trunk)
    for order in (("mu", "logvar"), ("logvar", "mu")):  # which head is which is the reader's choice
        _copy_heads(library, heads, order, latent_dim)
        mu, logvar = _encoder_outputs(encoder, x, latent_dim)
        if _close(mu.detach(), reference[0]) and _close(logvar.detach(), reference[1]):
            _gradient_reaches_every_layer(encoder, mu.sum() + logvar.sum(), "the encoder")
            return "on the library's weights it gives the library's mu and logvar, and gradients reach every layer."
    _copy_heads(library, heads, ("mu", "logvar"), latent_dim)
    raise Fault(_encoder_difference(_encoder_outputs(encoder, x, latent_dim), library, x))


def _encoder_layers(encoder: nn.Module, d: int, hidden: int) -> tuple[nn.Linear, list[nn.Linear]]:
    layers = _linears(encoder)
    trunk = [m for m in layers if (m.in_features, m.out_features) == (PIXELS, hidden)]
    heads = [m for m in layers if (m.in_features, m.out_features) in ((hidden, d), (hidden, 2 * d))]
    two_heads = len(heads) == 2 and all(m.out_features == d for m in heads)
    one_head = len(heads) == 1 and heads[0].out_features == 2 * d
    if len(trunk) != 1 or len(layers) != 1 + len(heads) or not (two_heads or one_head):
        raise Fault(f"expected a layer {PIXELS} -> {hidden} and two heads {hidden} -> {d} (one for mu, one for "
                    f"logvar); your encoder's linear layers are: {_shapes(layers)}")
    return trunk[0], heads


def _head_slices(heads: list[nn.Linear], d: int) -> list[tuple[Tensor, Tensor | None]]:
    """The reader's two heads as (weight, bias) pairs: two layers, or one layer of 2d outputs split in two."""
    if len(heads) == 2:
        return [(head.weight, head.bias) for head in heads]
    bias = heads[0].bias.split(d) if heads[0].bias is not None else (None, None)
    return list(zip(heads[0].weight.split(d), bias))


@torch.no_grad()
def _copy_heads(library: dict[str, nn.Linear], heads: list[nn.Linear], order: tuple[str, str], d: int,
                to_library: bool = False) -> None:
    """Copy the library's mu and logvar heads into the reader's heads, in ``order`` (or back)."""
    for (weight, bias), role in zip(_head_slices(heads, d), order):
        pairs = [(weight, library[role].weight), (bias, library[role].bias)]
        for reader, ours in pairs if bias is not None else pairs[:1]:
            (ours if to_library else reader).copy_(reader if to_library else ours)


def _encoder_outputs(encoder: nn.Module, x: Tensor, d: int) -> tuple[Tensor, Tensor]:
    out = _call(encoder, "Encoder", x)
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)):
        raise Fault(f"forward must return two tensors, (mu, logvar); it returned {type(out).__name__}")
    for name, value in zip(("mu", "logvar"), out):
        if tuple(value.shape) != (x.shape[0], d):
            raise Fault(f"{name} has shape {list(value.shape)}; for x of shape {list(x.shape)} it should be "
                        f"[{x.shape[0]}, {d}], one row of d numbers per image")
    return out[0], out[1]


@torch.no_grad()
def _library_encoder_outputs(library: dict[str, nn.Linear], x: Tensor, relu: bool) -> tuple[Tensor, Tensor]:
    h = library["trunk"](x.flatten(1))
    h = F.relu(h) if relu else h
    return library["mu"](h), library["logvar"](h)


def _encoder_difference(outputs: tuple[Tensor, Tensor], library: dict[str, nn.Linear], x: Tensor) -> str:
    mu, logvar = (t.detach() for t in outputs)
    want_mu, want_logvar = _library_encoder_outputs(library, x, relu=True)
    if _close(mu, want_mu):
        if _close(logvar, 0.5 * want_logvar):
            return "logvar is half the head's output, that is log sigma: return the head's log sigma^2 unchanged"
        if _close(logvar, want_logvar.exp()) or _close(logvar, (0.5 * want_logvar).exp()):
            return "your second output is sigma^2 or sigma; return log sigma^2, the head's output, unchanged"
        return "mu is right but logvar is not: return the logvar head's output unchanged"
    if all(_close(a, b) for a, b in zip((mu, logvar), _library_encoder_outputs(library, x, relu=False))):
        return "the trunk has no ReLU: put nn.ReLU() after the first linear layer"
    error = max((mu - want_mu).abs().max().item(), (logvar - want_logvar).abs().max().item())
    return (f"on the library's weights your outputs differ from the library's encoder by up to {error:.3g}; the "
            f"encoder is flatten -> Linear({PIXELS}, hidden) -> ReLU -> two Linear(hidden, d) heads")


def check_decoder(decoder_class: Any, latent_dim: int = 20, hidden: int = 400) -> Verdict:
    """Check a reader's ``Decoder``: ``Decoder(latent_dim, hidden)`` maps z [B, d] or [S, B, d] to Bernoulli logits
    [..., 1, 28, 28], as the library's decoder does on the same weights. Prints one line; returns a Verdict."""
    return _verdict("Decoder", lambda: _decoder_body(decoder_class, latent_dim, hidden))


def _decoder_body(decoder_class, latent_dim: int, hidden: int) -> str:
    decoder = _build(decoder_class, "Decoder", latent_dim, hidden)
    layers = _linears(decoder)
    shapes = [(m.in_features, m.out_features) for m in layers]
    if sorted(shapes) != sorted([(latent_dim, hidden), (hidden, PIXELS)]):
        raise Fault(f"expected layers {latent_dim} -> {hidden} and {hidden} -> {PIXELS} (one logit per pixel); "
                    f"your decoder's linear layers are: {_shapes(layers)}")
    vae = _reference_vae(latent_dim, hidden)
    library = _library_linears(vae)
    _copy(library["hidden"], layers[shapes.index((latent_dim, hidden))])
    _copy(library["logits"], layers[shapes.index((hidden, PIXELS))])
    z = torch.randn(3, 5, latent_dim, generator=torch.Generator().manual_seed(2))  # [S=3, B=5, d]
    with torch.no_grad():
        want = vae.decode(z)
    got = _decoder_output(decoder, z[0], want[0])
    if not _close(got, want[0]):
        raise Fault(_decoder_difference(got.detach(), want[0], vae, z[0]))
    _keeps_leading_dimensions(decoder, z, want)
    _gradient_reaches_every_layer(decoder, _call(decoder, "Decoder", z[0]).sum(), "the decoder")
    return "on the library's weights it gives its logits, for z [B, d] and [S, B, d]; gradients reach every layer."


def _keeps_leading_dimensions(decoder: nn.Module, z: Tensor, want: Tensor) -> None:
    """z: [S, B, d] must give the library's logits [S, B, 1, 28, 28]."""
    try:
        many = decoder(z)
    except Exception:  # noqa: BLE001
        many = None
    if not isinstance(many, Tensor) or tuple(many.shape) != tuple(want.shape) or not _close(many.detach(), want):
        raise Fault(f"for z of shape {list(z.shape)} (several samples per image) the output must be "
                    f"{list(want.shape)}; reshape only the last dimension (nn.Unflatten(-1, (1, 28, 28)))")


def _decoder_output(decoder: nn.Module, z: Tensor, want: Tensor) -> Tensor:
    got = _call(decoder, "Decoder", z)
    if not isinstance(got, Tensor):
        raise Fault(f"forward must return one tensor of logits; it returned {type(got).__name__}")
    if tuple(got.shape) == (z.shape[0], PIXELS):
        raise Fault(f"the output has shape {list(got.shape)}: reshape the {PIXELS} logits of each code into an "
                    "image, [..., 1, 28, 28] (nn.Unflatten(-1, (1, 28, 28)))")
    if tuple(got.shape) != tuple(want.shape):
        raise Fault(f"for z of shape {list(z.shape)} the output has shape {list(got.shape)}, expected "
                    f"{list(want.shape)}: one 1 x 28 x 28 image of logits per code")
    return got


def _decoder_difference(got: Tensor, want: Tensor, vae: VAE, z: Tensor) -> str:
    if _close(got, torch.sigmoid(want)):
        return ("your decoder returns probabilities (a sigmoid at the end): return the logits themselves; the loss "
                "turns them into log-probabilities in a stable way")
    if _close(got, -want):
        return "your logits have the wrong sign: return the last layer's output as it is"
    with torch.no_grad():
        linear = _library_linears(vae)
        without_relu = linear["logits"](linear["hidden"](z)).view(want.shape)
    if _close(got, without_relu):
        return "there is no ReLU between the two layers: put nn.ReLU() after the first one"
    return (f"on the library's weights your logits differ from the library's decoder by up to "
            f"{(got - want).abs().max().item():.3g}; the decoder is Linear(d, hidden) -> ReLU -> Linear(hidden, 784)")


def check_loss(negative_elbo: Callable[..., Any], latent_dim: int = 20, hidden: int = 400) -> Verdict:
    """Check a reader's ``negative_elbo(x, encoder, decoder, generator=None)``: on the library's networks and
    noise it equals ``vu.negative_elbo_loss(vu.vae_elbo(...))`` (a scalar: minus the one-sample ELBO, summed
    over pixels and latent dimensions, averaged over the batch) with the same gradients, and stays finite for
    confident logits. Prints one line; returns a Verdict."""
    return _verdict("negative_elbo", lambda: _loss_body(negative_elbo, latent_dim, hidden))


def _loss_body(negative_elbo, latent_dim: int, hidden: int) -> str:
    vae = _reference_vae(latent_dim, hidden)
    encoder, decoder, x = vae.encoder, vae.decode, _images(8, seed=3)  # decode: z [..., d] -> logits
    got = _loss_value(negative_elbo, x, encoder, decoder, seed=1)
    again = _loss_value(negative_elbo, x, encoder, decoder, seed=1)
    if not torch.equal(got.detach(), again.detach()):
        raise Fault("two calls with generators seeded alike gave different losses: draw the noise from the "
                    "generator, eps = torch.randn(mu.shape, generator=generator), then move it to mu.device")
    want = negative_elbo_loss(vae_elbo(vae, x, generator=torch.Generator().manual_seed(1)))
    if not _close(got.detach(), want.detach()):  # name the fault: the known wrong forms, on the same noise
        known = (message for message, value in _wrong_losses(vae, x, seed=1) if _close(got.detach(), value))
        raise Fault(next(known, f"your loss is {got.item():.4f} where the library's is another number on the same "
                                f"networks and noise (they differ by {abs(got - want).item():.3g} nats): check the "
                                "sign, the sums over pixels and latent dimensions, and the mean over the batch"))
    _same_gradients(got, want, vae)
    _finite_for_confident_logits(negative_elbo, vae, x)
    return ("on the library's networks and noise it equals vu.negative_elbo_loss(vu.vae_elbo(...)), gradients reach "
            "both networks, and it stays finite for confident logits.")


def _same_gradients(got: Tensor, want: Tensor, vae: VAE) -> None:
    """The reader's loss must send the library loss's gradients into both networks."""
    for name, net in (("encoder", vae.encoder), ("decoder", vae.decoder)):
        params = list(net.parameters())
        mine = torch.autograd.grad(got, params, retain_graph=True, allow_unused=True)
        reference = torch.autograd.grad(want, params, retain_graph=True)
        if any(g is None or not torch.allclose(g, r, rtol=1e-4, atol=1e-6) for g, r in zip(mine, reference)):
            raise Fault(f"the loss is right but the gradient that reaches the {name} is not: keep z = mu + sigma * "
                        "eps connected to the encoder's outputs (no .detach(), .item() or torch.no_grad())")


def _loss_value(negative_elbo, x: Tensor, encoder: nn.Module, decoder: nn.Module, seed: int) -> Tensor:
    try:
        value = negative_elbo(x, encoder, decoder, generator=torch.Generator().manual_seed(seed))
    except Exception as err:  # noqa: BLE001
        raise Fault(f"negative_elbo raised {type(err).__name__}: {err}") from None
    if value is None:
        raise Fault("negative_elbo returned None: write its body and return the loss")
    if not isinstance(value, Tensor):
        raise Fault(f"negative_elbo returned a {type(value).__name__}; return the loss tensor itself (not "
                    ".item()): backward needs it")
    if value.dim() > 0:
        per_image = " (one per image: average them over the batch)" if tuple(value.shape) == (x.shape[0],) else ""
        raise Fault(f"the loss has shape {list(value.shape)}{per_image}; it must be a scalar")
    return value


@torch.no_grad()
def _wrong_losses(vae: VAE, x: Tensor, seed: int) -> Iterator[tuple[str, Tensor]]:
    mu, logvar = vae.encoder(x)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(seed))
    logits = vae.decode(mu + torch.exp(0.5 * logvar) * eps)  # [B, 1, 28, 28]
    reconstruction = bernoulli_log_likelihood(x, logits)  # [B]
    kl = gaussian_kl(mu, logvar)  # [B]
    yield ("the sign is flipped: you return the ELBO, but the loss is MINUS the ELBO (optimizers minimize)",
           (reconstruction - kl).mean())
    yield ("sigma = exp(logvar) treats logvar as log sigma; it is log sigma^2, so sigma = exp(logvar / 2)",
           -(bernoulli_log_likelihood(x, vae.decode(mu + torch.exp(logvar) * eps)) - kl).mean())
    yield ("your KL treats logvar as log sigma; with logvar = log sigma^2 it is "
           "0.5 * sum(mu^2 + exp(logvar) - 1 - logvar)",
           -(reconstruction - 0.5 * (mu**2 + torch.exp(2 * logvar) - 1 - 2 * logvar).sum(-1)).mean())
    yield ("the KL is summed over the batch while the reconstruction is averaged: the ELBO is per image, so "
           "average both over the batch", -(reconstruction.mean() - kl.sum()))
    yield ("you sum over the batch: take the mean, so the loss (and a good learning rate) does not grow with B",
           -(reconstruction - kl).sum())
    per_pixel = x * logits - F.softplus(logits)  # [B, 1, 28, 28]
    yield ("you average log p(x|z) over the pixels: an image's log-likelihood is the SUM over its 784 pixels",
           -(per_pixel.mean(dim=(-3, -2, -1)) - kl).mean())
    yield ("you average the KL over the latent dimensions: sum it over them",
           -(reconstruction - 0.5 * (mu**2 + logvar.exp() - 1 - logvar).mean(-1)).mean())
    yield "your loss has no KL term: subtract KL(q || p) from the reconstruction term", -reconstruction.mean()
    yield "the KL enters with the wrong sign: the ELBO is reconstruction MINUS KL", -(reconstruction + kl).mean()


def _finite_for_confident_logits(negative_elbo, vae: VAE, x: Tensor) -> None:
    confident = lambda z: (200.0 * (2 * x - 1)).expand(*z.shape[:-1], *x.shape[1:])  # noqa: E731 -- logits +-200
    got = _loss_value(negative_elbo, x, vae.encoder, confident, seed=1).detach()
    if not torch.isfinite(got):
        raise Fault("the loss is inf or NaN for a confident decoder (logits of +-200): compute log p(x|z) as "
                    "x * logits - softplus(logits), never as log(sigmoid(logits))")


class _WatchedAdam(torch.optim.Adam):
    """Adam that notes, at every step, whether the gradients it applies are this step's alone."""

    def __init__(self, params, watched: Tensor, lr: float = 1e-3):
        super().__init__(params, lr=lr)
        self.watched, self.fresh_grad, self.problems, self.steps = watched, None, [], 0
        watched.register_hook(lambda grad: setattr(self, "fresh_grad", grad.detach().clone()))

    def step(self, closure=None):  # noqa: D102 -- Adam's step, after the bookkeeping
        self.steps, grad = self.steps + 1, self.watched.grad
        if self.fresh_grad is None:
            self.problems.append("optimizer.step() ran without a loss.backward() before it: call loss.backward() "
                                 "every step, between zero_grad() and step()")
        elif grad is None or not grad.abs().sum() > 0:
            self.problems.append("the gradients were cleared between loss.backward() and optimizer.step(), so the "
                                 "step had nothing to apply: call zero_grad() BEFORE loss.backward()")
        elif not torch.equal(grad, self.fresh_grad):
            self.problems.append("gradients pile up from step to step: call optimizer.zero_grad() every step, "
                                 "before loss.backward()")
        self.fresh_grad = None
        return super().step(closure)


def check_training_loop(train_one_epoch: Callable[..., Any], data: ImageDataset, latent_dim: int = 20,
                        hidden: int = 400, batch_size: int = 128) -> Verdict:
    """Check a reader's ``train_one_epoch(encoder, decoder, data, optimizer, batch_size)`` by running it once on
    the library's networks with an Adam that watches every step (``data``: a few hundred to a few thousand
    images): one pass in batches of ``batch_size``, each step on fresh binary images with cleared gradients, a
    backward pass and an optimizer step, one float loss per step, falling. Prints one line; returns a Verdict."""
    return _verdict("train_one_epoch", lambda: _loop_body(train_one_epoch, data, latent_dim, hidden, batch_size))


def _loop_body(train_one_epoch, data: ImageDataset, latent_dim: int, hidden: int, batch_size: int) -> str:
    vae, grey = _reference_vae(latent_dim, hidden).to(data.device), []

    def encoder(x: Tensor) -> tuple[Tensor, Tensor]:  # the library's encoder, noting grey (non-binary) images
        grey.append(bool(((x != 0) & (x != 1)).any()))
        return vae.encoder(x)

    optimizer = _WatchedAdam([*vae.parameters()], watched=_library_linears(vae)["logits"].weight)
    torch.manual_seed(0)
    try:
        losses = train_one_epoch(encoder, vae.decode, data, optimizer, batch_size)
    except Exception as err:  # noqa: BLE001
        raise Fault(f"train_one_epoch raised {type(err).__name__}: {err}") from None
    steps = math.ceil(len(data) / batch_size)
    if losses is None:
        raise Fault("train_one_epoch returned None: return the list of the losses, one per step")
    if optimizer.steps != steps:
        raise Fault(f"one epoch over {len(data):,} images in batches of {batch_size} is {steps} steps; your loop "
                    f"called optimizer.step() {optimizer.steps} times")
    if optimizer.problems:
        raise Fault(optimizer.problems[-1])
    if any(grey):
        raise Fault("the encoder saw grey levels: draw fresh binary images each epoch with "
                    "data.batches(batch_size, binarize=True)")
    if not (isinstance(losses, list) and len(losses) == steps and all(isinstance(v, float) for v in losses)):
        raise Fault(f"return a list of {steps} floats, the loss of each step (loss.item())")
    quarter = max(1, steps // 4)
    first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    if not last < first:
        raise Fault(f"the loss did not fall over the epoch (from {first:.1f} to {last:.1f} nats, means of the "
                    "first and last quarter of the steps): minimize the loss, loss.backward(), not its negative")
    return (f"{steps} steps, each on fresh binary images with cleared gradients, a backward pass and an Adam step; "
            f"the loss fell from {first:.1f} to {last:.1f} nats.")


def as_vae(encoder: nn.Module, decoder: nn.Module, latent_dim: int = 20, hidden: int = 400) -> VAE:
    """A ``vu.VAE`` with the reader's trained weights, mapped by layer shapes (never names), on the encoder's
    device; a ValueError unless it computes what the reader's modules compute on a fixed batch."""
    vae = _reference_vae(latent_dim, hidden).to(next(encoder.parameters()).device)
    library = _library_linears(vae)
    x = _images(5, seed=4).to(vae.device)
    with torch.no_grad():
        mu, logvar = encoder(x)
        logits = decoder(mu)
    trunk, heads = _encoder_layers(encoder, latent_dim, hidden)
    reader_decoder = {(m.in_features, m.out_features): m for m in _linears(decoder)}
    _copy(trunk, library["trunk"])
    _copy(reader_decoder[(latent_dim, hidden)], library["hidden"])
    _copy(reader_decoder[(hidden, PIXELS)], library["logits"])
    for order in (("mu", "logvar"), ("logvar", "mu")):
        _copy_heads(library, heads, order, latent_dim, to_library=True)
        with torch.no_grad():
            got_mu, got_logvar = vae.encoder(x)
            if _close(got_mu, mu) and _close(got_logvar, logvar) and _close(vae.decode(got_mu), logits):
                return vae.eval()
    raise ValueError("as_vae: the library's VAE with your weights does not reproduce your modules' outputs; "
                     "check that your encoder and decoder pass vu.exercises.check_encoder / check_decoder")
