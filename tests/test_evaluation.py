"""estimate_log_likelihood against the exact log p(x) of a linear-Gaussian VAE, chunking and bounds."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import LowRankMultivariateNormal

import vae_utils.evaluation as evaluation
from vae_utils.data import ImageDataset
from vae_utils.evaluation import estimate_log_likelihood
from vae_utils.model import VAE, VAEConfig
from vae_utils.evaluation import eval_batches, evaluate_elbo

# Small enough that every sampled pixel lies in [0, 1], which VAE.encode requires; the posterior's shape
# depends only on SCALES / SIGMA (4 and 2).
SIGMA = 0.05
SCALES = torch.tensor([0.2, 0.1], dtype=torch.float64)


def linear_gaussian_vae(exact_posterior: bool = True) -> tuple[VAE, LowRankMultivariateNormal]:
    """A VAE with a linear decoder x = W z + b + N(0, SIGMA^2 I), so p(x) = N(b, W W^T + SIGMA^2 I).

    W has orthogonal columns, so the true posterior is a diagonal Gaussian and the (linear) encoder
    can be set to it exactly; ``exact_posterior=False`` makes q three times too wide instead.
    """
    config = VAEConfig(latent_dim=2, hidden_dims=(), likelihood="gaussian", decoder_std=SIGMA)
    model = VAE(config).double()
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(784, 2, generator=g, dtype=torch.float64))
    w = q * SCALES  # [784, 2], W^T W = diag(SCALES^2)
    b = 0.5 + 0.05 * torch.randn(784, generator=g, dtype=torch.float64)
    posterior_var = 1 / (1 + SCALES**2 / SIGMA**2)  # diag of (I + W^T W / sigma^2)^-1
    gain = posterior_var[:, None] * w.T / SIGMA**2  # posterior mean = gain @ (x - b)
    logvar = posterior_var.log() if exact_posterior else (posterior_var * 9).log()
    with torch.no_grad():
        model.decoder[0].weight.copy_(w)
        model.decoder[0].bias.copy_(b)
        model.encoder.mu_head.weight.copy_(gain)
        model.encoder.mu_head.bias.copy_(-gain @ b)
        model.encoder.logvar_head.weight.zero_()
        model.encoder.logvar_head.bias.copy_(logvar)
    marginal = LowRankMultivariateNormal(b, cov_factor=w, cov_diag=torch.full((784,), SIGMA**2, dtype=torch.float64))
    return model, marginal


def images_from(marginal: LowRankMultivariateNormal, n: int) -> torch.Tensor:
    torch.manual_seed(1)
    return marginal.sample((n,)).view(n, 1, 28, 28)


def test_exact_posterior_gives_the_exact_log_likelihood():
    # With q equal to the true posterior every importance weight is p(x), so any K gives log p(x).
    model, marginal = linear_gaussian_vae(exact_posterior=True)
    x = images_from(marginal, 6)
    truth = marginal.log_prob(x.view(6, -1))
    for k, chunk in ((1, None), (7, 3), (50, None)):
        got = estimate_log_likelihood(model, x, k=k, batch_size=4, chunk_size=chunk, progress=False)
        assert got.shape == (6,) and got.dtype == torch.float64
        torch.testing.assert_close(got, truth, rtol=0, atol=1e-8)


def test_iw_estimate_rises_toward_the_exact_value_and_is_above_the_elbo():
    model, marginal = linear_gaussian_vae(exact_posterior=False)
    x = images_from(marginal, 16)
    truth = marginal.log_prob(x.view(16, -1)).mean().item()
    elbo = estimate_log_likelihood(model, x, k=1, progress=False).mean().item()  # K=1: the ELBO estimate
    iw = {k: estimate_log_likelihood(model, x, k=k, progress=False).mean().item() for k in (10, 1000)}
    assert elbo < iw[10] < iw[1000] <= truth + 0.05
    assert truth - iw[1000] < 0.1 * (truth - elbo)  # K=1000 closes most of the gap
    # evaluate_elbo's single-sample average agrees with the K=1 estimate up to Monte Carlo error.
    assert evaluate_elbo(model, x, batch_size=8)["elbo"] == pytest.approx(elbo, abs=0.1 * (truth - elbo) + 1.0)


def test_chunked_equals_unchunked_for_the_same_seed():
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=4, hidden_dims=(32,)))
    x = torch.rand(12, 1, 28, 28).bernoulli()
    whole = estimate_log_likelihood(model, x, k=60, batch_size=4, chunk_size=60, seed=3, progress=False)
    for chunk in (1, 7, None):
        chunked = estimate_log_likelihood(model, x, k=60, batch_size=4, chunk_size=chunk, seed=3, progress=False)
        torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-3)
    other_seed = estimate_log_likelihood(model, x, k=60, batch_size=4, seed=4, progress=False)
    assert not torch.equal(other_seed, whole)


def test_dataset_input_is_binarized_with_the_fixed_seed():
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=4, hidden_dims=(32,)))
    g = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8, generator=g),
                        torch.zeros(10, dtype=torch.long), ["a"], "random")
    kwargs = dict(k=20, seed=1, progress=False)
    binary = estimate_log_likelihood(model, data, binarize_seed=5, **kwargs)
    torch.testing.assert_close(binary, estimate_log_likelihood(model, data.binarized(5).float_images(), **kwargs))
    gray = estimate_log_likelihood(model, data, binarize_seed=None, **kwargs)
    torch.testing.assert_close(gray, estimate_log_likelihood(model, data.images, **kwargs))  # uint8 tensor
    assert not torch.allclose(gray, binary)


def test_memory_stays_bounded_for_large_k(monkeypatch):
    seen = []
    real = evaluation.iw_bound

    def spy(log_p, q, k, chunk_size=None, generator=None):
        seen.append((q.mu.shape[0], chunk_size, k))
        return real(log_p, q, 2, chunk_size=2, generator=generator)  # cheap stand-in

    monkeypatch.setattr(evaluation, "iw_bound", spy)
    model = VAE(VAEConfig(latent_dim=4, hidden_dims=(32,)))
    estimate_log_likelihood(model, torch.rand(250, 1, 28, 28), k=5000, progress=False)
    assert [b for b, _, _ in seen] == [100, 100, 50]
    for batch, chunk, k in seen:
        assert k == 5000 and batch * chunk * 784 <= evaluation.MAX_DECODED_ELEMENTS


def test_bad_arguments():
    model = VAE(VAEConfig(latent_dim=2, hidden_dims=(8,)))
    with pytest.raises(ValueError, match="k"):
        estimate_log_likelihood(model, torch.rand(2, 1, 28, 28), k=0, progress=False)
    with pytest.raises(TypeError, match="ImageDataset, images .* or an \\(images, labels\\) pair"):
        estimate_log_likelihood(model, [1, 2, 3], progress=False)
    with pytest.raises(ValueError, match="k .*must be an int >= 1, got True"):
        estimate_log_likelihood(model, torch.rand(2, 1, 28, 28), k=True, progress=False)


def test_empty_data_is_refused():
    model = VAE(VAEConfig(latent_dim=2, hidden_dims=(8,)))
    empty = ImageDataset(torch.zeros(0, 1, 28, 28, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), ["a"], "none")
    for data in (empty, torch.zeros(0, 1, 28, 28)):
        with pytest.raises(ValueError, match="the data set is empty"):
            estimate_log_likelihood(model, data, k=5, progress=False)
        with pytest.raises(ValueError, match="the data set is empty"):
            evaluate_elbo(model, data)
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            evaluate_elbo(model, torch.rand(2, 1, 28, 28), batch_size=bad)


def test_a_huge_k_is_refused_with_an_estimate_of_the_time(monkeypatch):
    model = VAE(VAEConfig(latent_dim=2, hidden_dims=(8,)))
    x = torch.rand(10, 1, 28, 28)
    with pytest.raises(ValueError, match=r"10 images x K=1,000,000,000 samples = 1e\+10 decoder evaluations, "
                                         r"about \d+ (days|hours|minutes|seconds) on cpu.*allow_long=True"):
        estimate_log_likelihood(model, x, k=10**9, progress=False)

    seen = []

    def cheap(log_p, q, k, chunk_size=None, generator=None):
        seen.append(k)
        return torch.zeros(q.mu.shape[0])

    monkeypatch.setattr(evaluation, "iw_bound", cheap)
    assert estimate_log_likelihood(model, x, k=10**9, progress=False, allow_long=True).shape == (10,)
    assert seen and set(seen) == {10**9}


def test_both_evaluations_batch_through_eval_batches(monkeypatch):
    model = VAE(VAEConfig(latent_dim=2, hidden_dims=(8,)))
    g = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8, generator=g),
                        torch.zeros(5, dtype=torch.long), ["a"], "random")
    from_data = torch.cat(list(eval_batches(model, data, 2, binarize_seed=3)))
    from_tensor = torch.cat(list(eval_batches(model, data.binarized(3).images, 2)))
    assert torch.equal(from_data, from_tensor) and from_data.dtype == torch.float32

    calls = []
    real = evaluation.eval_batches

    def spy(*args, **kwargs):
        calls.append(kwargs.get("binarize_seed", args[3] if len(args) > 3 else None))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "eval_batches", spy)
    evaluate_elbo(model, data)
    estimate_log_likelihood(model, data, k=2, progress=False)
    assert calls == [evaluation.EVAL_BINARIZE_SEED] * 2
