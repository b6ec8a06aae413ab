"""Normalizing-flow posteriors: log-determinants against brute-force Jacobians, invertibility,
densities that integrate to 1, the zero-step flow equal to the Gaussian VAE, and the IW estimate."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

import vae_utils as vu
from vae_utils import flows
from vae_utils.data import ImageDataset
from vae_utils.model import VAE, VAEConfig
from vae_utils.objectives import vae_elbo

SMALL = VAEConfig(latent_dim=3, hidden_dims=(16,), image_shape=(1, 4, 4))


def random_images(n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, 4, 4), 0.4), generator=g)


def perturb(module: torch.nn.Module, scale: float = 0.5, seed: int = 0) -> None:
    """Make every weight clearly nonzero, so no test passes because a layer starts near zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def one_step(kind: str, dim: int, context_dim: int, parity: int = 0):
    if kind == "iaf":
        return flows.IAFStep(dim, hidden=8, context_dim=context_dim)
    return flows.CouplingStep(dim, hidden=8, context_dim=context_dim, parity=parity)


@pytest.mark.parametrize("kind", ["iaf", "coupling"])
@pytest.mark.parametrize("context_dim", [0, 5])
def test_step_log_det_matches_brute_force_jacobian(kind, context_dim):
    torch.manual_seed(0)
    step = one_step(kind, dim=4, context_dim=context_dim).double()
    perturb(step)
    context = torch.randn(context_dim, dtype=torch.float64) if context_dim else None
    for _ in range(3):
        z = torch.randn(4, dtype=torch.float64)
        full = jacobian(lambda v: step(v, context)[0], z)  # [4, 4]
        _, log_det = step(z, context)
        assert torch.allclose(log_det, torch.linalg.slogdet(full).logabsdet, atol=1e-10)


@pytest.mark.parametrize("kind", ["iaf", "coupling"])
def test_flow_log_det_matches_brute_force_jacobian_for_several_steps(kind):
    flow = flows.Flow(5, flows.FlowConfig(steps=3, kind=kind, hidden=8), context_dim=2).double()
    perturb(flow)
    context = torch.randn(2, dtype=torch.float64)
    z = torch.randn(5, dtype=torch.float64)
    full = jacobian(lambda v: flow(v, context)[0], z)
    assert torch.allclose(flow(z, context)[1], torch.linalg.slogdet(full).logabsdet, atol=1e-10)


def test_made_is_autoregressive():
    made = flows.MADE(dim=5, hidden=12).double()
    perturb(made)
    z = torch.randn(5, dtype=torch.float64)
    for i in range(2):  # m and a
        jac = jacobian(lambda v: made(v)[i], z)
        assert torch.all(jac.triu() == 0), "output i must not depend on z_j for j >= i"
        assert jac.tril(-1).abs().sum() > 0, "and it should depend on earlier dimensions"


@pytest.mark.parametrize("kind", ["iaf", "coupling"])
def test_inverse_undoes_forward(kind):
    flow = flows.Flow(4, flows.FlowConfig(steps=4, kind=kind, hidden=8), context_dim=3).double()
    perturb(flow, scale=0.3)
    context = torch.randn(7, 3, dtype=torch.float64)
    z = torch.randn(7, 4, dtype=torch.float64)
    z_t, _ = flow(z, context)
    assert not torch.allclose(z_t, z, atol=1e-2), "the flow should move the points"
    assert torch.allclose(flow.inverse(z_t, context), z, atol=1e-9)


@pytest.mark.parametrize("kind", ["iaf", "coupling"])
def test_flow_density_in_2d_integrates_to_one(kind):
    q, _ = flows.fit_to_density(lambda z: -0.5 * z.pow(2).sum(-1), 2, flows.FlowConfig(steps=3, kind=kind, hidden=8), iterations=0)
    q = q.double()
    perturb(q.flow, scale=0.3)
    grid = torch.linspace(-12, 12, 601, dtype=torch.float64)
    zz = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = q.log_prob(zz).exp().sum() * (grid[1] - grid[0]) ** 2
    assert abs(mass.item() - 1) < 2e-3
    with torch.no_grad():  # log_prob (through the inverse) agrees with the log q that sampling reports
        z, log_q = q.sample(50, torch.Generator().manual_seed(1))
        assert torch.allclose(q.log_prob(z), log_q, atol=1e-8)


def flow_config(**flow) -> flows.FlowVAEConfig:
    return flows.FlowVAEConfig(**SMALL.to_dict(), flow=flows.FlowConfig(**flow))


def test_zero_steps_is_exactly_the_gaussian_vae_elbo():
    model = flows.FlowVAE(flow_config(steps=0))
    vae = VAE(SMALL)
    vae.load_state_dict(model.state_dict())  # the same encoder and decoder (the flow has no weights)
    x = random_images()
    flow_terms = vae_elbo(model, x, n_samples=4, generator=torch.Generator().manual_seed(3))  # Monte Carlo KL
    vae_terms = vae_elbo(vae, x, n_samples=4, analytic_kl=False, generator=torch.Generator().manual_seed(3))
    for a, b in zip(flow_terms, vae_terms):
        assert torch.equal(a, b)


def test_a_flow_vae_is_built_from_its_config_alone_with_the_same_weights_every_time():
    config = flow_config(steps=2, hidden=8)
    a, b = flows.FlowVAE(config), flows.FlowVAE(flows.FlowVAEConfig.from_dict(config.to_dict()))
    assert isinstance(b.config.flow, flows.FlowConfig) and b.config == config
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    plain = VAE(SMALL)  # the encoder and decoder are those of the plain VAE with the same config
    for name, value in plain.state_dict().items():
        assert torch.equal(a.state_dict()[name], value), name


@pytest.mark.parametrize("kind", ["iaf", "coupling"])
def test_flow_vae_log_q_agrees_with_the_density_through_the_inverse(kind):
    model = flows.FlowVAE(flow_config(steps=2, kind=kind, hidden=8)).double()
    perturb(model.flow, scale=0.3)
    x = random_images(4).double()
    with torch.no_grad():
        q = model.posterior(x)
        z = q.rsample(10, torch.Generator().manual_seed(0))  # [10, 4, 3]
        log_q = q.log_prob(z)  # [10, 4], from the change of variables while sampling
        torch.testing.assert_close(q.log_prob(z.clone()), log_q, rtol=0, atol=1e-8)  # through the inverse
        z0 = model.flow.inverse(z, q.context)
        base = torch.distributions.Normal(q.mu, (0.5 * q.logvar).exp()).log_prob(z0).sum(-1)
        assert torch.allclose(log_q, base - model.flow(z0, q.context)[1], atol=1e-8)
        assert q.kl_to_prior() is None  # no closed form: the ELBO estimates it
    assert not torch.allclose(z, z0, atol=1e-2), "the flow should move the samples away from the Gaussian's"


def test_iw_estimate_with_k_1_is_the_flow_elbo_and_rises_with_k():
    model = flows.FlowVAE(flow_config(steps=2, hidden=8))
    x = random_images(5)
    k1 = vu.estimate_log_likelihood(model, x, k=1, seed=7, progress=False)
    elbo = vae_elbo(model, x, 1, generator=torch.Generator().manual_seed(7)).elbo.detach()
    assert torch.allclose(k1, elbo, atol=1e-5)
    elbo_many = vae_elbo(model, x, n_samples=2000, generator=torch.Generator().manual_seed(8)).elbo.detach()
    k200 = vu.estimate_log_likelihood(model, x, k=200, chunk_size=64, seed=9, progress=False)
    assert (k200 - elbo_many).mean() > 0


def test_fit_load_or_train_and_the_checkpoint_serve_a_flow_vae(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(64, 1, 4, 4, generator=g) * 255).to(torch.uint8)
    data = ImageDataset(images, torch.zeros(64, dtype=torch.long), ["x"], "tiny")
    config, train = flow_config(steps=2, hidden=8), vu.TrainConfig(epochs=3, batch_size=16, lr=1e-2, device="cpu")
    path = tmp_path / "flow.pt"
    result = vu.load_or_train(path, config, train, data, progress=False)
    history = result.history
    assert isinstance(result.model, flows.FlowVAE) and len(history) == 3
    assert history.train_objective[-1] > history.train_objective[0]
    again = vu.load_or_train(path, config, train, data, progress=False)  # loaded, not trained
    assert again.history.to_dict() == history.to_dict()
    for a, b in zip(result.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    loaded = vu.load_checkpoint(path, device="cpu")
    assert isinstance(loaded.model, flows.FlowVAE) and loaded.model.config == config
    assert vu.evaluate_elbo(loaded.model, data)["n"] == 64


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="kind"):
        flows.FlowConfig(kind="planar")
    with pytest.raises(ValueError, match="steps"):
        flows.FlowConfig(steps=-1)
    with pytest.raises(ValueError, match="FlowVAEConfig.flow must be a FlowConfig"):
        flows.FlowVAEConfig(flow=3)
    with pytest.raises(TypeError, match="FlowVAE takes a FlowVAEConfig"):
        flows.FlowVAE(SMALL)
