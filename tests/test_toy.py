"""The toy models against exact answers: closed forms, torch.distributions, and quadrature vs closed form."""

import math

import pytest
import torch

from vae_utils.objectives import gaussian_kl
from vae_utils.toy import LatentGrid, LinearGaussianModel, NonlinearGaussianModel, gaussian_kl_between

F64 = torch.float64


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


def random_linear_model(generator, data_dim=3, latent_dim=2, noise_std=0.6):
    weight = torch.randn(data_dim, latent_dim, generator=generator, dtype=F64)
    bias = torch.randn(data_dim, generator=generator, dtype=F64)
    return LinearGaussianModel(weight, bias, noise_std)


def test_linear_log_joint_matches_torch_distributions(generator):
    model = random_linear_model(generator)
    x, _ = model.sample(4, generator)
    z = torch.randn(5, 4, 2, generator=generator, dtype=F64)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    likelihood = torch.distributions.Normal(model.decode(z), model.noise_std).log_prob(x).sum(-1)
    assert model.log_joint(x, z).shape == (5, 4)
    torch.testing.assert_close(model.log_joint(x, z), prior + likelihood)


@pytest.mark.parametrize("make_model", [random_linear_model, lambda g: NonlinearGaussianModel(2, 0.7)],
                         ids=["linear", "nonlinear"])
def test_log_likelihood_takes_the_decoder_output_like_the_vae(generator, make_model):
    # one convention with vae_utils.VAE: log_likelihood(x, decode(z)), log_joint(x, z) = that + log p(z)
    model = make_model(generator)
    x, _ = model.sample(4, generator)
    z = torch.randn(5, 4, model.latent_dim, generator=generator, dtype=F64)
    decoded = model.decode(z)
    assert decoded.shape == (5, 4, model.data_dim)
    # log N(x; f(z), s^2 I) by hand
    s2 = model.noise_std**2
    by_hand = (-0.5 * (x - decoded) ** 2 / s2 - 0.5 * math.log(2 * math.pi * s2)).sum(-1)
    assert model.log_likelihood(x, decoded).shape == (5, 4)
    torch.testing.assert_close(model.log_likelihood(x, decoded), by_hand)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(model.log_joint(x, z), by_hand + prior)
    # one decoded sample per point broadcasts over the batch, like z did
    one = decoded[:, :1]  # [5, 1, D]
    torch.testing.assert_close(model.log_likelihood(x, one), model.log_likelihood(x, one.expand(-1, 4, -1)))


def test_linear_bayes_rule_holds_at_every_z(generator):
    # log p(z|x) + log p(x) = log p(x, z) for the closed-form posterior and marginal
    model = random_linear_model(generator)
    x, _ = model.sample(4, generator)
    z = torch.randn(6, 4, 2, generator=generator, dtype=F64)
    torch.testing.assert_close(model.log_posterior(x, z) + model.log_marginal(x), model.log_joint(x, z))


def test_linear_marginal_matches_monte_carlo_over_the_prior(generator):
    # p(x) = E_{p(z)}[p(x|z)]: a 1-D latent needs few prior samples for a precise estimate
    model = LinearGaussianModel(torch.tensor([[1.0], [-0.5]], dtype=F64), noise_std=0.8)
    x, _ = model.sample(3, generator)
    z = torch.randn(200_000, 1, 1, generator=generator, dtype=F64).expand(-1, 3, -1)
    estimate = torch.logsumexp(model.log_likelihood(x, model.decode(z)), 0) - math.log(z.shape[0])
    torch.testing.assert_close(estimate, model.log_marginal(x), atol=1e-2, rtol=0)


def test_linear_exact_elbo_gap_is_kl_to_posterior(generator):
    model = random_linear_model(generator, latent_dim=1)
    x, _ = model.sample(4, generator)
    mu = torch.randn(4, 1, generator=generator, dtype=F64)
    logvar = torch.randn(4, 1, generator=generator, dtype=F64)
    post_mean, post_var = model.posterior_moments(x)
    gap = model.log_marginal(x) - model.elbo(x, mu, logvar)
    torch.testing.assert_close(gap, gaussian_kl_between(mu, logvar, post_mean, post_var.log()))
    assert (gap > 0).all()
    # at the exact posterior the bound is tight
    torch.testing.assert_close(model.elbo(x, post_mean, post_var.log()), model.log_marginal(x))


def test_linear_exact_elbo_matches_monte_carlo(generator):
    model = random_linear_model(generator)
    x, _ = model.sample(2, generator)
    mu = torch.randn(2, 2, generator=generator, dtype=F64)
    logvar = 0.5 * torch.randn(2, 2, generator=generator, dtype=F64)
    z = mu + (0.5 * logvar).exp() * torch.randn(100_000, 2, 2, generator=generator, dtype=F64)
    log_q = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    terms = model.log_joint(x, z) - log_q
    standard_error = terms.std(0) / math.sqrt(z.shape[0])
    assert ((terms.mean(0) - model.elbo(x, mu, logvar)).abs() < 4 * standard_error).all()


@pytest.mark.parametrize("latent_dim", [1, 2])
def test_quadrature_matches_linear_closed_form(generator, latent_dim):
    linear = random_linear_model(generator, data_dim=3, latent_dim=latent_dim)
    quadrature = NonlinearGaussianModel(latent_dim, linear.noise_std, decoder=linear.decode)
    x, _ = linear.sample(4, generator)
    torch.testing.assert_close(quadrature.log_marginal(x), linear.log_marginal(x), atol=1e-8, rtol=0)
    mean, var = quadrature.posterior_moments(x)
    exact_mean, exact_var = linear.posterior_moments(x)
    torch.testing.assert_close(mean, exact_mean, atol=1e-8, rtol=0)
    torch.testing.assert_close(var, exact_var, atol=1e-8, rtol=0)
    mu = 0.3 * torch.randn(4, latent_dim, generator=generator, dtype=F64)
    logvar = torch.full((4, latent_dim), -0.5, dtype=F64)
    torch.testing.assert_close(quadrature.elbo(x, mu, logvar), linear.elbo(x, mu, logvar), atol=1e-6, rtol=0)


def test_gaussian_kl_between_matches_torch_distributions(generator):
    # log-variances in, like objectives.gaussian_kl; summed over the last dim
    mu_q, mu_p = torch.randn(2, 4, 3, generator=generator, dtype=F64)
    logvar_q, logvar_p = torch.randn(2, 4, 3, generator=generator, dtype=F64)
    q = torch.distributions.Normal(mu_q, (0.5 * logvar_q).exp())
    p = torch.distributions.Normal(mu_p, (0.5 * logvar_p).exp())
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(gaussian_kl_between(mu_q, logvar_q, mu_p, logvar_p), expected)
    assert not torch.allclose(gaussian_kl_between(mu_p, logvar_p, mu_q, logvar_q), expected)  # not symmetric


def test_gaussian_kl_between_standard_normal_is_objectives_gaussian_kl(generator):
    mu, logvar = torch.randn(2, 5, 4, generator=generator, dtype=F64)
    zero = torch.zeros_like(mu)
    torch.testing.assert_close(gaussian_kl_between(mu, logvar, zero, zero), gaussian_kl(mu, logvar))
    torch.testing.assert_close(gaussian_kl_between(mu, logvar, mu, logvar), torch.zeros(5, dtype=F64))


def test_parabola_posterior_peaks_inside_the_closest_points():
    # x = (0, 1): the curve (z, z^2 - 1) is closest where d/dz [z^2 + (z^2 - 2)^2] = 0, i.e. z^2 = 3/2;
    # the prior N(0, 1) pulls each posterior peak towards 0.
    model = NonlinearGaussianModel(1, 0.5)
    x = torch.tensor([[0.0, 1.0]], dtype=F64)
    z = model.grid.points[:, 0]
    distance = (model.decode(model.grid.points) - x).pow(2).sum(-1)
    closest = z[distance.argmin()].abs().item()
    assert abs(closest - math.sqrt(1.5)) < model.grid.step
    density = model.posterior_on_grid(x)[:, 0]
    peak = z[density.argmax()].abs().item()
    assert 1.0 < peak < closest - 0.03
    torch.testing.assert_close(density, density.flip(0))  # symmetric in z -> -z


def test_nonlinear_fine_grid_agrees_with_coarse_grid(generator):
    coarse = NonlinearGaussianModel(1, 0.4, grid=LatentGrid(1, limit=7.0, points_per_dim=301))
    fine = NonlinearGaussianModel(1, 0.4, grid=LatentGrid(1, limit=9.0, points_per_dim=3001))
    x, _ = fine.sample(5, generator)
    torch.testing.assert_close(coarse.log_marginal(x), fine.log_marginal(x), atol=1e-8, rtol=0)


def test_nonlinear_posterior_is_normalized_and_gap_is_kl(generator):
    model = NonlinearGaussianModel(1, 0.5)
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64)  # the first is bimodal: peaks near +-1.17
    density = model.posterior_on_grid(x)
    torch.testing.assert_close(density.sum(0) * model.grid.step, torch.ones(2, dtype=F64))
    mu = torch.tensor([[0.5], [0.8]], dtype=F64)
    logvar = torch.tensor([[-1.0], [-2.0]], dtype=F64)
    gap = model.log_marginal(x) - model.elbo(x, mu, logvar)
    torch.testing.assert_close(gap, model.kl_to_posterior(x, mu, logvar), atol=1e-8, rtol=0)
    assert (gap > 0).all()
    mean, _ = model.posterior_moments(x)
    assert abs(mean[0, 0].item()) < 1e-8  # symmetric bimodal posterior


def test_nonlinear_marginal_matches_monte_carlo_over_the_prior(generator):
    model = NonlinearGaussianModel(2, 0.7)
    x, _ = model.sample(2, generator)
    z = torch.randn(400_000, 1, 2, generator=generator, dtype=F64).expand(-1, 2, -1)
    estimate = torch.logsumexp(model.log_likelihood(x, model.decode(z)), 0) - math.log(z.shape[0])
    torch.testing.assert_close(estimate, model.log_marginal(x), atol=2e-2, rtol=0)


def test_sampling_is_seeded():
    model = NonlinearGaussianModel(1, 0.5)
    a = model.sample(3, torch.Generator().manual_seed(1))
    b = model.sample(3, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert a[0].shape == (3, 2) and a[1].shape == (3, 1)


def test_bad_shapes_raise_clear_errors():
    model = LinearGaussianModel.identity(2)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        model.log_marginal(torch.zeros(2))
    with pytest.raises(ValueError, match=r"\[S, B, 2\]"):
        model.log_joint(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="latent_dim 1 or 2"):
        NonlinearGaussianModel(3)


def test_passing_z_where_the_decoder_output_is_expected_says_so():
    model = NonlinearGaussianModel(1, 0.5)  # d = 1, D = 2
    x, z = model.sample(3, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"looks like a code z.*pass model\.decode\(z\)"):
        model.log_likelihood(x, z.unsqueeze(0))
    with pytest.raises(ValueError, match=r"decoded must have shape \[S, B, 2\].*got \(3, 2\)"):
        model.log_likelihood(x, model.decode(z))  # no S dimension
    with pytest.raises(ValueError, match=r"with B = 3"):
        model.log_likelihood(x, model.decode(torch.zeros(4, 2, 1, dtype=F64)))
    assert model.log_likelihood(x, model.decode(z.unsqueeze(0))).shape == (1, 3)  # the fix the message names
