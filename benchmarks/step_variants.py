"""Three ways to compute one training step of the reference model, timed against each other in one process.

1. eager: what `fit` does by default (`estimate_elbo`, the loss, backward, fused Adam);
2. fused: the same step with the loss and the reparameterization as two `torch.autograd.Function`s whose
   backward is derived by hand (d/dlogits of the Bernoulli log-likelihood is x - sigmoid(logits), d/dmu of the
   closed-form KL is mu, d/dlogvar is (exp(logvar) - 1) / 2): fewer, larger kernels than autograd's, checked
   against autograd with `torch.autograd.gradcheck` before anything is timed;
3. compiled: `estimate_elbo` through `torch.compile`, as `TrainConfig(compile=True)` does.

The variants take turns on the same pre-binarized batches (blocks of 60 steps, six rounds), so a change of
load on a shared machine hits all of them alike; it prints the fastest block and the median per variant.

    .venv/bin/python benchmarks/step_variants.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor

import vae_utils
from vae_utils.objectives import ELBO, estimate_elbo
from vae_utils.training import default_optimizer

BATCH_SIZE, BLOCK, ROUNDS = 128, 60, 6


class BernoulliElboTerms(torch.autograd.Function):
    """(logits [B, D], x [B, D], mu [B, d], logvar [B, d]) -> (reconstruction [B], kl [B]), nats per example:
    reconstruction = sum_D x * logits - softplus(logits); kl = KL(N(mu, exp(logvar)) || N(0, I))."""

    @staticmethod
    def forward(ctx, logits: Tensor, x: Tensor, mu: Tensor, logvar: Tensor):
        variance = logvar.exp()
        ctx.save_for_backward(logits, x, mu, variance)
        reconstruction = (x * logits - F.softplus(logits)).sum(-1)
        kl = 0.5 * (mu * mu + variance - 1 - logvar).sum(-1)
        return reconstruction, kl

    @staticmethod
    def backward(ctx, grad_reconstruction: Tensor, grad_kl: Tensor):
        logits, x, mu, variance = ctx.saved_tensors
        grad_kl = grad_kl.unsqueeze(-1)
        grad_logits = (x - torch.sigmoid(logits)) * grad_reconstruction.unsqueeze(-1)
        return grad_logits, None, mu * grad_kl, 0.5 * (variance - 1) * grad_kl


class Reparameterize(torch.autograd.Function):
    """z = mu + exp(logvar / 2) * eps: (mu [B, d], logvar [B, d], eps [B, d]) -> z [B, d]."""

    @staticmethod
    def forward(ctx, mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
        std = (0.5 * logvar).exp()
        ctx.save_for_backward(std, eps)
        return torch.addcmul(mu, std, eps)

    @staticmethod
    def backward(ctx, grad_z: Tensor):
        std, eps = ctx.saved_tensors
        return grad_z, 0.5 * grad_z * eps * std, None


def fused_elbo(model, x: Tensor) -> ELBO:
    """``estimate_elbo(model, x)`` (beta 1, one sample) through the two hand-derived functions: fields [B]."""
    mu, logvar = model.posterior(x)
    z = Reparameterize.apply(mu, logvar, torch.randn_like(mu))
    reconstruction, kl = BernoulliElboTerms.apply(model.decoder_output(z).flatten(1), x.flatten(1), mu, logvar)
    return ELBO(reconstruction - kl, reconstruction, kl)


def check_gradients() -> None:
    """gradcheck both functions in float64 against finite differences; and the fused ELBO against estimate_elbo."""
    g = torch.Generator().manual_seed(0)
    logits, mu, logvar = (torch.randn(5, n, dtype=torch.float64, generator=g, requires_grad=True) for n in (7, 3, 3))
    x = torch.rand(5, 7, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(BernoulliElboTerms.apply, (logits, x, mu, logvar))
    eps = torch.randn(5, 3, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(Reparameterize.apply, (mu, logvar, eps))
    model = vae_utils.VAE(vae_utils.VAEConfig(seed=0))
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.3, dtype=torch.float32), generator=g)
    torch.manual_seed(1)
    fused = fused_elbo(model, x)
    torch.manual_seed(1)
    eager = estimate_elbo(model, x)
    torch.testing.assert_close(fused.elbo, eager.elbo, rtol=1e-5, atol=1e-3)
    print("gradcheck: both hand-derived backwards match finite differences; fused ELBO == estimate_elbo")


def make_step(objective):
    model = vae_utils.VAE(vae_utils.VAEConfig(seed=0))
    optimizer = default_optimizer(model, 1e-3)

    def step(x: Tensor) -> None:
        loss = -objective(model, x).objective.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    check_gradients()
    train = vae_utils.load_dataset("fashion-mnist", "train", device="cpu")
    batches = list(train.batches(BATCH_SIZE, generator=torch.Generator().manual_seed(0), binarize=True))
    batches = batches[: BLOCK * ROUNDS + 2]
    variants = {"eager": make_step(estimate_elbo), "fused": make_step(fused_elbo),
                "compiled": make_step(torch.compile(estimate_elbo, dynamic=False))}
    for name, step in variants.items():
        start = time.perf_counter()
        step(batches[-1])
        step(batches[-2])
        print(f"{name}: first two steps {time.perf_counter() - start:.1f} s (compiling, for 'compiled')")
    ms = {name: [] for name in variants}
    for r in range(ROUNDS):
        for name, step in variants.items():
            start = time.perf_counter()
            for x in batches[r * BLOCK:(r + 1) * BLOCK]:
                step(x)
            ms[name].append(1e3 * (time.perf_counter() - start) / BLOCK)
    print(f"ms per step of {BATCH_SIZE} ({torch.get_num_threads()} threads), {ROUNDS} blocks of {BLOCK} steps:")
    for name, values in ms.items():
        print(f"  {name:9s} fastest {min(values):.2f}  median {statistics.median(values):.2f}")
    return ms


if __name__ == "__main__":
    main()
