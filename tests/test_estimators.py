"""Score-function and reparameterized gradient estimators against exact gradients (logvar = log sigma^2)."""

import math

import pytest
import torch

from vae_utils.estimators import (
    gaussian_score,
    optimal_baseline,
    quadratic_objective,
    quadratic_objective_gradient,
    reparameterization_gradient,
    score_function_gradient,
)
from vae_utils.objectives import log_normal_diag
from vae_utils.toy import LinearGaussianModel

F64 = torch.float64


@pytest.fixture
def problem():
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    logvar = torch.tensor([0.0, -1.0, 0.6], dtype=F64)
    target = torch.tensor([1.0, 0.0, -1.0], dtype=F64)
    return mu, logvar, target


def assert_unbiased(samples, exact, sigmas=4.0):
    for estimate, error, truth in zip(samples.mean(), samples.standard_error(), exact):
        assert ((estimate - truth).abs() <= sigmas * error + 1e-12).all(), (estimate, truth, error)


def test_gaussian_score_is_the_autograd_gradient_of_log_q(problem):
    mu, logvar, _ = problem
    z = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    m, lv = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    # log_normal_diag sums over the last dim; one z row at a time gives each row's own gradient
    rows = [torch.autograd.grad(log_normal_diag(z[i], m, lv), (m, lv)) for i in range(7)]
    score = gaussian_score(z, mu, logvar)
    torch.testing.assert_close(score.mu, torch.stack([r[0] for r in rows]))
    torch.testing.assert_close(score.logvar, torch.stack([r[1] for r in rows]))


def test_the_score_has_mean_zero_under_q(problem):
    mu, logvar, _ = problem
    eps = torch.randn(200_000, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    score = gaussian_score(mu + torch.exp(0.5 * logvar) * eps, mu, logvar)
    for field in score:
        se = field.std(0) / math.sqrt(field.shape[0])
        assert (field.mean(0).abs() < 4 * se).all()


@pytest.mark.parametrize("estimator", [score_function_gradient, reparameterization_gradient])
def test_estimators_are_unbiased_on_the_quadratic(problem, estimator):
    mu, logvar, target = problem
    samples = estimator(quadratic_objective(target), mu, logvar, 50_000, torch.Generator().manual_seed(0))
    assert samples.mu.shape == (50_000, 3) and samples.logvar.shape == (50_000, 3)
    assert_unbiased(samples, quadratic_objective_gradient(mu, logvar, target))


def test_quadratic_gradient_matches_autograd_of_its_closed_form(problem):
    mu, logvar, target = problem
    m, lv = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    expected_f = -0.5 * (((m - target) ** 2).sum() + lv.exp().sum())
    exact = torch.autograd.grad(expected_f, (m, lv))
    formula = quadratic_objective_gradient(mu, logvar, target)
    torch.testing.assert_close(formula.mu, exact[0])
    torch.testing.assert_close(formula.logvar, exact[1])


def test_reparameterization_has_lower_variance_on_the_quadratic(problem):
    mu, logvar, target = problem
    f = quadratic_objective(target)
    score = score_function_gradient(f, mu, logvar, 20_000, torch.Generator().manual_seed(1)).variance()
    reparam = reparameterization_gradient(f, mu, logvar, 20_000, torch.Generator().manual_seed(1)).variance()
    assert (reparam.mu < score.mu).all() and (reparam.logvar < score.logvar).all()
    # for this f the reparameterized gradient w.r.t. mu is target - z, whose variance is exactly sigma^2
    torch.testing.assert_close(reparam.mu, logvar.exp(), rtol=0.05, atol=0)


def test_baseline_keeps_score_function_unbiased_and_lowers_variance(problem):
    mu, logvar, target = problem
    f = quadratic_objective(target)
    expected_f = -0.5 * (((mu - target) ** 2).sum() + logvar.exp().sum())
    plain = score_function_gradient(f, mu, logvar, 50_000, torch.Generator().manual_seed(2))
    with_baseline = score_function_gradient(f, mu, logvar, 50_000, torch.Generator().manual_seed(2), baseline=expected_f)
    assert_unbiased(with_baseline, quadratic_objective_gradient(mu, logvar, target))
    assert with_baseline.variance().mu.sum() < plain.variance().mu.sum()


def test_optimal_baseline_matches_its_closed_form_and_beats_the_mean():
    # f(z) = z^2 under N(mu, sigma^2): b* = E[f eps^2] / E[eps^2] = mu^2 + 3 sigma^2, while E[f] = mu^2 + sigma^2
    mu, logvar = torch.tensor([1.0], dtype=F64), torch.tensor([math.log(0.25)], dtype=F64)

    def f(z):
        return (z**2).sum(-1)

    b_star = optimal_baseline(f, mu, logvar, 400_000, torch.Generator().manual_seed(3))
    assert b_star.shape == (1,)
    torch.testing.assert_close(b_star, torch.tensor([1.0 + 3 * 0.25], dtype=F64), rtol=0.01, atol=0)

    def variance_with(b):
        samples = score_function_gradient(f, mu, logvar, 200_000, torch.Generator().manual_seed(4), baseline=b)
        return samples.variance().mu.item()

    assert variance_with(b_star.item()) < variance_with(1.0 + 0.25)  # b* beats b = E[f]
    assert variance_with(b_star.item()) < variance_with(b_star.item() + 0.3)
    assert variance_with(b_star.item()) < variance_with(b_star.item() - 0.3)


def test_batched_parameters_and_elbo_gradient_of_linear_model():
    # d/d(mu, logvar) of the exact linear-Gaussian E_q[log p(x, z)] (autograd on the closed form) vs both estimators
    gen = torch.Generator().manual_seed(3)
    model = LinearGaussianModel(torch.tensor([[1.5], [-0.7]], dtype=F64), noise_std=0.5)
    x, _ = model.sample(2, gen)
    mu = torch.tensor([[0.2], [-0.4]], dtype=F64)
    logvar = torch.tensor([[-0.6], [0.2]], dtype=F64)
    m, lv = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    # E_q[log p(x, z)] = ELBO - entropy, entropy = 1/2 log(2 pi e) + 1/2 logvar per dimension
    entropy = (0.5 * math.log(2 * math.pi * math.e) + 0.5 * lv).sum(-1)
    exact = torch.autograd.grad((model.elbo(x, m, lv) - entropy).sum(), (m, lv))

    def f(z):
        return model.log_joint(x, z)

    for estimator in (score_function_gradient, reparameterization_gradient):
        samples = estimator(f, mu, logvar, 100_000, torch.Generator().manual_seed(4))
        assert samples.mu.shape == (100_000, 2, 1)
        assert_unbiased(samples, exact)


def test_bad_arguments_raise():
    f = quadratic_objective(torch.zeros(2))
    with pytest.raises(ValueError, match="same shape"):
        score_function_gradient(f, torch.zeros(2), torch.zeros(3), 10)
    with pytest.raises(ValueError, match="n_samples"):
        reparameterization_gradient(f, torch.zeros(2), torch.zeros(2), 1)
    with pytest.raises(ValueError, match="n_samples"):
        optimal_baseline(f, torch.zeros(2), torch.zeros(2), 1)
