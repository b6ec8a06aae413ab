"""Objectives against exact answers: torch.distributions, closed forms, a linear-Gaussian model."""

import math

import pytest
import torch
from torch import distributions as D

from vae_utils.objectives import (
    ELBO,
    bernoulli_log_likelihood,
    effective_sample_size,
    elbo_monte_carlo,
    elbo_terms,
    gaussian_kl,
    gaussian_kl_per_dim,
    gaussian_log_likelihood,
    importance_weighted_bound,
    log_normal_diag,
    log_standard_normal,
    monte_carlo_kl,
    negative_elbo_loss,
)

DTYPE = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_gaussian(batch: int, dim: int, seed: int = 0):
    g = gen(seed)
    mu = torch.randn(batch, dim, generator=g, dtype=DTYPE)
    logvar = torch.randn(batch, dim, generator=g, dtype=DTYPE).clamp(-3, 3)
    return mu, logvar


def diag_normal(mu, logvar):
    return D.Independent(D.Normal(mu, torch.exp(0.5 * logvar)), 1)


# --------------------------------------------------------------------------- log-densities
def test_log_normal_diag_matches_torch_distributions():
    mu, logvar = random_gaussian(4, 3)
    z = torch.randn(5, 4, 3, generator=gen(1), dtype=DTYPE)  # leading sample dim broadcasts
    expected = diag_normal(mu, logvar).log_prob(z)
    torch.testing.assert_close(log_normal_diag(z, mu, logvar), expected)
    torch.testing.assert_close(log_standard_normal(z), diag_normal(torch.zeros(3, dtype=DTYPE), torch.zeros(3, dtype=DTYPE)).log_prob(z))


def test_bernoulli_log_likelihood_matches_torch_distributions():
    g = gen(2)
    x = torch.bernoulli(torch.full((3, 1, 4, 5), 0.5, dtype=DTYPE), generator=g)
    logits = 3 * torch.randn(6, 3, 1, 4, 5, generator=g, dtype=DTYPE)  # [S, B, C, H, W]
    expected = D.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(dim=(-3, -2, -1))
    result = bernoulli_log_likelihood(x, logits)
    assert result.shape == (6, 3)
    torch.testing.assert_close(result, expected)


def test_bernoulli_log_likelihood_is_stable_for_saturated_logits():
    x = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 2)
    logits = torch.tensor([200.0, -200.0, -200.0, 200.0]).view(1, 1, 2, 2)
    # two pixels are right with certainty (log p = 0) and two wrong by 200 nats each (log p = -200)
    torch.testing.assert_close(bernoulli_log_likelihood(x, logits), torch.tensor([-400.0]))


@pytest.mark.parametrize("logvar_kind", ["scalar", "per_pixel", "per_element"])
def test_gaussian_log_likelihood_matches_torch_distributions(logvar_kind):
    g = gen(3)
    x = torch.rand(3, 2, 4, 5, generator=g, dtype=DTYPE)
    mean = torch.rand(7, 3, 2, 4, 5, generator=g, dtype=DTYPE)  # [S, B, C, H, W]
    logvar = {
        "scalar": -1.3,
        "per_pixel": torch.randn(2, 4, 5, generator=g, dtype=DTYPE),
        "per_element": torch.randn(7, 3, 2, 4, 5, generator=g, dtype=DTYPE),
    }[logvar_kind]
    std = torch.exp(0.5 * torch.as_tensor(logvar, dtype=DTYPE))
    expected = D.Normal(mean, std).log_prob(x).sum(dim=(-3, -2, -1))
    result = gaussian_log_likelihood(x, mean, logvar)
    assert result.shape == (7, 3)
    torch.testing.assert_close(result, expected)


# --------------------------------------------------------------------------- KL
def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = random_gaussian(8, 5)
    q = D.Normal(mu, torch.exp(0.5 * logvar))
    p = D.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    per_dim = D.kl_divergence(q, p)
    torch.testing.assert_close(gaussian_kl_per_dim(mu, logvar), per_dim)
    torch.testing.assert_close(gaussian_kl(mu, logvar), per_dim.sum(-1))
    assert gaussian_kl(mu, logvar).shape == (8,)


def test_gaussian_kl_is_zero_only_at_the_prior():
    zeros = torch.zeros(2, 3)
    torch.testing.assert_close(gaussian_kl(zeros, zeros), torch.zeros(2))
    mu, logvar = random_gaussian(100, 4)
    assert (gaussian_kl(mu, logvar) > 0).all()


def test_gaussian_kl_agrees_with_monte_carlo_within_standard_error():
    mu, logvar = random_gaussian(6, 4, seed=4)
    n = 20_000
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, 6, 4, generator=gen(5), dtype=DTYPE)
    samples = log_normal_diag(z, mu, logvar) - log_standard_normal(z)  # [n, B], mean is the KL
    estimate = monte_carlo_kl(z, mu, logvar)
    torch.testing.assert_close(estimate, samples.mean(0))
    standard_error = samples.std(0) / math.sqrt(n)
    # The MC estimate is a mean of n iid terms: within 5 standard errors except with prob ~6e-7 each.
    assert ((estimate - gaussian_kl(mu, logvar)).abs() < 5 * standard_error).all()


# --------------------------------------------------------------------------- ELBO bookkeeping
def test_elbo_terms_weights_only_the_kl_and_keeps_it_unweighted():
    reconstruction = torch.tensor([-100.0, -80.0])
    kl = torch.tensor([10.0, 4.0])
    result = elbo_terms(reconstruction, kl, beta=0.5)
    assert isinstance(result, ELBO)
    torch.testing.assert_close(result.objective, torch.tensor([-105.0, -82.0]))
    torch.testing.assert_close(result.kl, kl)
    torch.testing.assert_close(negative_elbo_loss(result), torch.tensor(93.5))
    torch.testing.assert_close(result.elbo, reconstruction - kl)  # the field named elbo is always the ELBO
    torch.testing.assert_close(elbo_terms(reconstruction, kl).objective, reconstruction - kl)


# --------------------------------------------------------------------------- a linear-Gaussian model
# p(z) = N(0, 1), p(x|z) = N(w z + b, s^2): exact p(x) = N(b, w^2 + s^2) and exact posterior
# p(z|x) = N(m, v) with v = 1 / (1 + w^2 / s^2), m = v w (x - b) / s^2.
W, B, S = 1.5, 0.3, 0.5


def linear_gaussian_log_joint(x, z):
    """x: [B]; z: [K, B, 1] -> [K, B]."""
    return log_standard_normal(z) + log_normal_diag(x[..., None], W * z + B, math.log(S**2))


def exact_log_marginal(x):
    return D.Normal(torch.as_tensor(B, dtype=x.dtype), math.sqrt(W**2 + S**2)).log_prob(x)


def exact_posterior(x):
    """(mu [B, 1], logvar [B, 1]) of p(z|x)."""
    v = 1.0 / (1.0 + W**2 / S**2)
    mu = (v * W * (x - B) / S**2)[:, None]
    return mu, torch.full_like(mu, math.log(v))


def test_exact_posterior_makes_elbo_and_iw_bound_equal_log_marginal():
    x = torch.linspace(-3, 3, 7, dtype=DTYPE)
    mu, logvar = exact_posterior(x)
    # Under the exact posterior log p(x, z) - log q(z|x) = log p(x) for every z: no MC error at all.
    torch.testing.assert_close(elbo_monte_carlo(linear_gaussian_log_joint, x, mu, logvar, 3, gen()), exact_log_marginal(x))
    for chunk_size in (None, 1, 7):
        bound = importance_weighted_bound(linear_gaussian_log_joint, x, mu, logvar, k=50, chunk_size=chunk_size, generator=gen())
        torch.testing.assert_close(bound, exact_log_marginal(x))


def test_elbo_is_log_marginal_minus_kl_to_posterior():
    x = torch.tensor([-1.0, 0.2, 2.5], dtype=DTYPE)
    mu = torch.tensor([[0.4], [-0.3], [1.0]], dtype=DTYPE)  # deliberately wrong q
    logvar = torch.tensor([[-1.0], [0.5], [-3.0]], dtype=DTYPE)
    post_mu, post_logvar = exact_posterior(x)
    kl_to_posterior = D.kl_divergence(diag_normal(mu, logvar), diag_normal(post_mu, post_logvar))
    exact_elbo = exact_log_marginal(x) - kl_to_posterior
    assert (exact_elbo < exact_log_marginal(x)).all()

    n = 20_000
    g = gen(6)
    estimate = elbo_monte_carlo(linear_gaussian_log_joint, x, mu, logvar, n_samples=n, generator=g)
    # Per-sample log weights from the same generator state, for the MC standard error.
    g = gen(6)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, 3, 1, generator=g, dtype=DTYPE)
    log_w = linear_gaussian_log_joint(x, z) - log_normal_diag(z, mu, logvar)
    torch.testing.assert_close(estimate, log_w.mean(0))
    standard_error = log_w.std(0) / math.sqrt(n)
    assert ((estimate - exact_elbo).abs() < 5 * standard_error).all()
    assert (estimate < exact_log_marginal(x)).all()


def test_iw_bound_rises_toward_log_marginal_as_k_grows():
    replicates = 2000
    x = torch.full((replicates,), 3.0, dtype=DTYPE)  # each row is an independent estimate
    mu = torch.zeros(replicates, 1, dtype=DTYPE)  # proposal = prior, far from p(z|x) = N(1.62, 0.1)
    logvar = torch.zeros(replicates, 1, dtype=DTYPE)
    log_px = exact_log_marginal(x[:1]).item()
    means, errors = [], []
    for seed, k in enumerate((1, 10, 100, 1000)):
        bound = importance_weighted_bound(linear_gaussian_log_joint, x, mu, logvar, k, chunk_size=128, generator=gen(seed))
        means.append(bound.mean().item())
        errors.append(bound.std().item() / math.sqrt(replicates))
    for i in range(3):  # each step up in K raises the mean bound by more than 4 combined standard errors
        assert means[i + 1] - means[i] > 4 * math.hypot(errors[i], errors[i + 1]), (means, errors)
    for mean, error in zip(means, errors):  # E[bound] <= log p(x)
        assert mean < log_px + 4 * error, (means, errors, log_px)
    gap_1, gap_1000 = log_px - means[0], abs(log_px - means[-1])
    assert gap_1 > 1.0 and gap_1000 < 0.01 * gap_1, (means, log_px)


def test_elbo_gradient_matches_analytic_gradient():
    # d ELBO / d mu = -d KL(q || posterior) / d mu = -(mu - m) / v for the linear-Gaussian model.
    x = torch.tensor([0.7], dtype=DTYPE)
    mu = torch.tensor([[-0.2]], dtype=DTYPE, requires_grad=True)
    logvar = torch.tensor([[-1.0]], dtype=DTYPE, requires_grad=True)
    post_mu, post_logvar = exact_posterior(x)
    n = 50_000
    elbo = elbo_monte_carlo(linear_gaussian_log_joint, x, mu, logvar, n_samples=n, generator=gen(7))
    elbo.sum().backward()
    expected = -(mu.detach() - post_mu) / post_logvar.exp()
    # Per sample, d/dmu [log p(x, z) - log q(z|x)] with z = mu + sigma * eps is d/dz log p(z|x)
    # = -(mu + sigma * eps - m) / v (log q does not change: (z - mu) / sigma = eps), whose standard
    # deviation is exactly sigma / v; the MC mean over n samples has standard error sigma / (v sqrt(n)).
    standard_error = (0.5 * logvar.detach()).exp() / post_logvar.exp() / math.sqrt(n)
    assert (mu.grad - expected).abs().item() < 5 * standard_error.item()


# --------------------------------------------------------------------------- IW bound mechanics
def test_iw_bound_with_one_sample_equals_elbo_estimate():
    x = torch.linspace(-2, 2, 5, dtype=DTYPE)
    mu, logvar = random_gaussian(5, 1, seed=8)
    elbo = elbo_monte_carlo(linear_gaussian_log_joint, x, mu, logvar, n_samples=1, generator=gen(9))
    bound = importance_weighted_bound(linear_gaussian_log_joint, x, mu, logvar, k=1, generator=gen(9))
    torch.testing.assert_close(bound, elbo)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 40, 1000])
def test_chunked_iw_bound_equals_unchunked_on_the_same_samples(chunk_size):
    x = torch.linspace(-2, 2, 4, dtype=DTYPE)
    mu, logvar = random_gaussian(4, 1, seed=10)
    k = 40
    seen = []

    def recording_log_joint(x, z):
        assert z.shape[0] <= chunk_size  # memory stays bounded by the chunk
        seen.append(z)
        return linear_gaussian_log_joint(x, z)

    bound = importance_weighted_bound(recording_log_joint, x, mu, logvar, k, chunk_size=chunk_size, generator=gen(11))
    z = torch.cat(seen)  # all K samples actually used, [K, B, 1]
    assert z.shape == (k, 4, 1)
    log_w = linear_gaussian_log_joint(x, z) - log_normal_diag(z, mu, logvar)
    unchunked = torch.logsumexp(log_w, 0) - math.log(k)
    torch.testing.assert_close(bound, unchunked)


def test_iw_bound_large_k_runs_with_small_chunks_and_large_log_weights():
    # log weights around -5000 nats would underflow exp(); the log-space computation must not.
    x = torch.zeros(3)
    mu, logvar = torch.zeros(3, 2), torch.zeros(3, 2)

    def far_log_joint(x, z):
        return log_standard_normal(z) - 5000.0

    bound = importance_weighted_bound(far_log_joint, x, mu, logvar, k=5000, chunk_size=256, generator=gen(12))
    torch.testing.assert_close(bound, torch.full((3,), -5000.0))  # q = p(z): every weight is exp(-5000)


def test_iw_bound_rejects_bad_arguments():
    mu = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="k"):
        importance_weighted_bound(linear_gaussian_log_joint, torch.zeros(2), mu, mu, k=0)
    with pytest.raises(ValueError, match="chunk_size"):
        importance_weighted_bound(linear_gaussian_log_joint, torch.zeros(2), mu, mu, k=5, chunk_size=0)


def test_effective_sample_size():
    equal = torch.full((50, 2), -3.0)
    torch.testing.assert_close(effective_sample_size(equal), torch.full((2,), 50.0))
    one_dominant = torch.full((50, 1), -1000.0)
    one_dominant[7] = 0.0
    torch.testing.assert_close(effective_sample_size(one_dominant), torch.ones(1))
    log_w = torch.randn(30, 4, generator=gen(13), dtype=DTYPE)
    w = log_w.exp()
    expected = w.sum(0) ** 2 / (w**2).sum(0)
    torch.testing.assert_close(effective_sample_size(log_w), expected)
    torch.testing.assert_close(effective_sample_size(log_w + 2000.0), expected)  # shift-invariant, no overflow


# ----------------------------------------------------------------------------- training objectives
def _small_vae_and_batch():
    from vae_utils.model import VAE, VAEConfig

    model = VAE(VAEConfig(latent_dim=3, hidden_dims=(16,)))
    x = torch.rand(6, 1, 28, 28, generator=gen(1)).bernoulli(generator=gen(2))
    return model, x


def test_elbo_objective_is_vae_elbo_with_its_beta():
    from vae_utils.objectives import elbo_objective, vae_elbo

    model, x = _small_vae_and_batch()
    for beta in (1.0, 4.0):
        torch.manual_seed(0)
        got = elbo_objective(beta)(model, x)
        torch.manual_seed(0)
        expected = vae_elbo(model, x, beta=beta)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        elbo_objective(-1.0)


def test_iw_objective_fields_on_the_same_samples():
    from vae_utils.objectives import iw_objective

    model, x = _small_vae_and_batch()
    k = 50
    torch.manual_seed(3)
    got = iw_objective(k)(model, x)
    # The same K samples by hand (same global RNG state).
    torch.manual_seed(3)
    mu, logvar = model.encode(x)
    z = model.reparameterize(mu, logvar, n_samples=k)  # [K, B, d]
    log_px_z = model.log_likelihood(x, model.decode(z))  # [K, B]
    log_w = log_px_z + log_standard_normal(z) - log_normal_diag(z, mu, logvar)
    torch.testing.assert_close(got.objective, torch.logsumexp(log_w, 0) - math.log(k))
    torch.testing.assert_close(got.reconstruction, log_px_z.mean(0))
    torch.testing.assert_close(got.kl, gaussian_kl(mu, logvar))
    torch.testing.assert_close(got.elbo, log_px_z.mean(0) - gaussian_kl(mu, logvar))  # the ELBO, not the bound
    assert (got.objective >= log_w.mean(0) - 1e-4).all()  # Jensen on these samples: the bound >= the mean log-weight
    assert got.objective.requires_grad  # trainable


def test_iw_objective_with_one_sample_is_the_monte_carlo_elbo():
    from vae_utils.objectives import iw_objective

    model, x = _small_vae_and_batch()
    torch.manual_seed(5)
    got = iw_objective(1)(model, x)
    torch.manual_seed(5)
    mu, logvar = model.encode(x)
    expected = elbo_monte_carlo(model.log_joint, x, mu, logvar, 1)
    torch.testing.assert_close(got.objective, expected)
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="k \\(importance samples\\) must be an int >= 1"):
            iw_objective(bad)
