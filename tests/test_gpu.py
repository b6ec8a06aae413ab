"""The model and objectives on CUDA. Skipped where torch.cuda.is_available() is False."""

import copy

import pytest
import torch

from vae_utils.device import pick_device, seed_everything
from vae_utils.model import VAE, VAEConfig
from vae_utils.objectives import importance_weighted_bound, negative_elbo_loss, vae_elbo

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)"),
]

CONFIGS = [
    VAEConfig(),
    VAEConfig(architecture="conv", latent_dim=8),
    VAEConfig(likelihood="gaussian", hidden_dims=(64,), latent_dim=4),
]


@pytest.fixture
def exact_float32():
    """Turn off TF32 so CUDA matmuls and convolutions compute in full float32 like the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def binary_images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.bernoulli(torch.full((batch, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(seed))


def test_pick_device_prefers_cuda():
    assert pick_device().type == "cuda"
    assert pick_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.architecture}-{c.likelihood}")
def test_forward_backward_on_cuda(config):
    seed_everything(0)
    vae = VAE(config).to("cuda")
    assert vae.device.type == "cuda"
    x = binary_images(16).cuda()
    out = vae(x)
    assert out.decoded.device.type == "cuda" and out.decoded.shape == x.shape
    loss = negative_elbo_loss(vae_elbo(vae, x, n_samples=2))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.device.type == "cuda" for p in vae.parameters())
    assert vae.sample(4).device.type == "cuda"
    assert vae.reconstruct(x).device.type == "cuda"
    cuda_generator = torch.Generator(device="cuda").manual_seed(0)
    assert vae.sample(2, generator=cuda_generator).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.architecture}-{c.likelihood}")
def test_same_seed_gives_the_same_results_on_cpu_and_gpu(config, exact_float32):
    seed_everything(0)
    cpu_model = VAE(config)
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    x = binary_images(8, seed=1)

    # A CPU generator draws the noise on the CPU for both, so the samples are identical.
    cpu = vae_elbo(cpu_model, x, n_samples=3, generator=torch.Generator().manual_seed(5))
    gpu = vae_elbo(gpu_model, x.cuda(), n_samples=3, generator=torch.Generator().manual_seed(5))
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-3)

    negative_elbo_loss(cpu).backward()
    negative_elbo_loss(gpu).backward()
    for p_cpu, p_gpu in zip(cpu_model.parameters(), gpu_model.parameters()):
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=1e-3, atol=1e-4)


def test_iw_bound_runs_on_cuda_and_matches_cpu(exact_float32):
    seed_everything(0)
    cpu_model = VAE(VAEConfig(architecture="conv", latent_dim=8))
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    x = binary_images(8, seed=2)
    results = []
    for model, data in ((cpu_model, x), (gpu_model, x.cuda())):
        with torch.no_grad():
            mu, logvar = model.encode(data)
            results.append(
                importance_weighted_bound(
                    model.log_joint, data, mu, logvar, k=500, chunk_size=128,
                    generator=torch.Generator().manual_seed(3),
                )
            )
    cpu_bound, gpu_bound = results
    assert gpu_bound.device.type == "cuda" and gpu_bound.shape == (8,)
    assert torch.isfinite(gpu_bound).all()
    torch.testing.assert_close(gpu_bound.cpu(), cpu_bound, rtol=1e-4, atol=1e-3)

    # A generator on the GPU works too (different noise, so no exact comparison).
    with torch.no_grad():
        mu, logvar = gpu_model.encode(x.cuda())
        other = importance_weighted_bound(
            gpu_model.log_joint, x.cuda(), mu, logvar, k=500, chunk_size=128,
            generator=torch.Generator(device="cuda").manual_seed(3),
        )
    assert torch.isfinite(other).all()
