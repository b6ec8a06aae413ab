"""Score-function and reparameterized gradient estimators against an exact gradient."""

import pytest
import torch

from vae_utils.estimators import (
    quadratic_objective,
    quadratic_objective_gradient,
    reparameterization_gradient,
    score_function_gradient,
)
from vae_utils.toy import LinearGaussianModel

F64 = torch.float64


@pytest.fixture
def problem():
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    log_sigma = torch.tensor([0.0, -0.5, 0.3], dtype=F64)
    target = torch.tensor([1.0, 0.0, -1.0], dtype=F64)
    return mu, log_sigma, target


def assert_unbiased(samples, exact, sigmas=4.0):
    for estimate, error, truth in zip(samples.mean(), samples.standard_error(), exact):
        assert ((estimate - truth).abs() <= sigmas * error + 1e-12).all(), (estimate, truth, error)


@pytest.mark.parametrize("estimator", [score_function_gradient, reparameterization_gradient])
def test_estimators_are_unbiased_on_the_quadratic(problem, estimator):
    mu, log_sigma, target = problem
    samples = estimator(quadratic_objective(target), mu, log_sigma, 50_000, torch.Generator().manual_seed(0))
    assert samples.mu.shape == (50_000, 3) and samples.log_sigma.shape == (50_000, 3)
    assert_unbiased(samples, quadratic_objective_gradient(mu, log_sigma, target))


def test_reparameterization_has_lower_variance_on_the_quadratic(problem):
    mu, log_sigma, target = problem
    f = quadratic_objective(target)
    score = score_function_gradient(f, mu, log_sigma, 20_000, torch.Generator().manual_seed(1)).variance()
    reparam = reparameterization_gradient(f, mu, log_sigma, 20_000, torch.Generator().manual_seed(1)).variance()
    assert (reparam.mu < score.mu).all() and (reparam.log_sigma < score.log_sigma).all()
    # for this f the reparameterized gradient w.r.t. mu is target - z, whose variance is exactly sigma^2
    torch.testing.assert_close(reparam.mu, torch.exp(2 * log_sigma), rtol=0.05, atol=0)


def test_baseline_keeps_score_function_unbiased_and_lowers_variance(problem):
    mu, log_sigma, target = problem
    f = quadratic_objective(target)
    expected_f = -0.5 * (((mu - target) ** 2).sum() + torch.exp(2 * log_sigma).sum())
    plain = score_function_gradient(f, mu, log_sigma, 50_000, torch.Generator().manual_seed(2))
    with_baseline = score_function_gradient(f, mu, log_sigma, 50_000, torch.Generator().manual_seed(2), baseline=expected_f)
    assert_unbiased(with_baseline, quadratic_objective_gradient(mu, log_sigma, target))
    assert with_baseline.variance().mu.sum() < plain.variance().mu.sum()


def test_batched_parameters_and_elbo_gradient_of_linear_model():
    # d/d(mu, log sigma) of the exact linear-Gaussian ELBO (autograd on the closed form) vs both estimators
    gen = torch.Generator().manual_seed(3)
    model = LinearGaussianModel(torch.tensor([[1.5], [-0.7]], dtype=F64), noise_std=0.5)
    x, _ = model.sample(2, gen)
    mu = torch.tensor([[0.2], [-0.4]], dtype=F64)
    log_sigma = torch.tensor([[-0.3], [0.1]], dtype=F64)
    m, ls = mu.clone().requires_grad_(), log_sigma.clone().requires_grad_()
    # E_q[log p(x, z)] = ELBO - entropy, and the entropy's gradient is known (1 per log sigma): test E_q[log p(x,z)]
    expected_log_joint = model.elbo(x, m, 2 * ls) - (0.5 * (1 + torch.log(torch.tensor(2 * torch.pi, dtype=F64))) + ls).sum(-1)
    exact = torch.autograd.grad(expected_log_joint.sum(), (m, ls))

    def f(z):
        return model.log_joint(x, z)

    for estimator in (score_function_gradient, reparameterization_gradient):
        samples = estimator(f, mu, log_sigma, 100_000, torch.Generator().manual_seed(4))
        assert samples.mu.shape == (100_000, 2, 1)
        assert_unbiased(samples, exact)


def test_bad_arguments_raise():
    f = quadratic_objective(torch.zeros(2))
    with pytest.raises(ValueError, match="same shape"):
        score_function_gradient(f, torch.zeros(2), torch.zeros(3), 10)
    with pytest.raises(ValueError, match="n_samples"):
        reparameterization_gradient(f, torch.zeros(2), torch.zeros(2), 1)
