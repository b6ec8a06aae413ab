"""Per-image refinement of q: never lowers an image's ELBO, reaches the exact posterior where it is
Gaussian, leaves the model alone."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from vae_utils import refinement
from vae_utils.model import VAE, VAEConfig
from vae_utils.objectives import elbo_monte_carlo, standard_normal

SIGMA = 0.5
SMALL = VAEConfig(latent_dim=3, hidden_dims=(16,), image_shape=(1, 4, 4))


def random_images(n: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, 4, 4), 0.4), generator=g)


def linear_gaussian_vae() -> VAE:
    """x = W z + b + N(0, SIGMA^2 I) with orthogonal columns of W: the exact posterior is a diagonal Gaussian."""
    model = VAE(VAEConfig(latent_dim=2, hidden_dims=(), image_shape=(1, 2, 3), likelihood="gaussian", decoder_std=SIGMA)).double()
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))
    with torch.no_grad():
        model.decoder[0].weight.copy_(q * torch.tensor([2.0, 1.0], dtype=torch.float64))
        model.decoder[0].bias.zero_()
    return model


def test_refinement_never_lowers_an_images_elbo_even_with_a_bad_step_size():
    model = VAE(SMALL)
    x = random_images()
    for optimizer, lr in (("adam", 1e-2), ("sgd", 1.0)):  # this SGD step is too large for some images
        result = refinement.refine(model, x, steps=20, lr=lr, optimizer=optimizer, eval_samples=200)
        assert bool((result.elbo_after >= result.elbo_before).all())
        mu0, logvar0 = model.encode(x)
        rejected = ~result.accepted
        assert torch.equal(result.mu[rejected], mu0[rejected].detach())
        assert torch.equal(result.logvar[rejected], logvar0[rejected].detach())
        # the reported numbers are the ELBOs of the returned q on the same fixed noise
        eval_noise = standard_normal((200, *mu0.shape), mu0, torch.Generator().manual_seed(0))
        recomputed = refinement.elbo_with_noise(model, x, result.mu, result.logvar, eval_noise)
        assert torch.allclose(recomputed, result.elbo_after, atol=1e-4)
    assert bool(result.accepted.any()) and bool((~result.accepted).any()), "the SGD run should exercise both branches"


def test_refinement_closes_the_gap_where_the_best_q_is_exact():
    model = linear_gaussian_vae()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 1, 2, 3, generator=g, dtype=torch.float64)
    w = model.decoder[0].weight
    exact = MultivariateNormal(torch.zeros(6, dtype=torch.float64), w @ w.T + SIGMA**2 * torch.eye(6, dtype=torch.float64))
    log_px = exact.log_prob(x.reshape(5, 6))
    mu0 = torch.zeros(5, 2, dtype=torch.float64)  # the prior as a (bad) starting q
    logvar0 = torch.zeros(5, 2, dtype=torch.float64)
    result = refinement.refine(model, x, mu0, logvar0, steps=1500, lr=2e-2, n_samples=16, eval_samples=2000)
    gap_before = (log_px - result.elbo_before).mean()
    gap_after = (log_px - result.elbo_after).mean()
    assert gap_before > 1.0
    assert gap_after.abs() < 0.02 * gap_before


def test_model_is_not_changed_and_gets_no_gradients():
    model = VAE(SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    refinement.refine(model, random_images(), steps=5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_elbo_with_noise_is_the_monte_carlo_elbo_on_the_same_draws():
    model = VAE(SMALL)
    x = random_images()
    mu, logvar = model.encode(x)
    eps = standard_normal((7, *mu.shape), mu, torch.Generator().manual_seed(4))
    ours = refinement.elbo_with_noise(model, x, mu, logvar, eps, chunk_size=3)
    reference = elbo_monte_carlo(model.log_joint, x, mu, logvar, n_samples=7, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(ours, reference, atol=1e-4)


def test_bad_arguments_are_named():
    model = VAE(SMALL)
    with pytest.raises(ValueError, match="optimizer"):
        refinement.refine(model, random_images(), optimizer="lbfgs")
    with pytest.raises(ValueError, match="n_samples"):
        refinement.refine(model, random_images(), n_samples=0)


def test_gaussian_elbo_is_the_elbo_on_fresh_seeded_noise():
    model = VAE(SMALL)
    x = random_images()
    mu, logvar = model.encode(x)
    a = refinement.gaussian_elbo(model, x, mu, logvar, n_samples=30, seed=5)
    eps = standard_normal((30, *mu.shape), mu, torch.Generator().manual_seed(5))
    assert torch.allclose(a, refinement.elbo_with_noise(model, x, mu, logvar, eps))
    assert not torch.allclose(a, refinement.gaussian_elbo(model, x, mu, logvar, n_samples=30, seed=6))
