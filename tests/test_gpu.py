"""The model and objectives on CUDA. Skipped where torch.cuda.is_available() is False."""

import copy
import sys
from pathlib import Path

import pytest
import torch

from vae_utils import cuda_graphs
from vae_utils.cuda_graphs import GraphedStep
from vae_utils.device import pick_device, seed_everything
from vae_utils.model import VAE, VAEConfig
from vae_utils.objectives import importance_weighted_bound, negative_elbo_loss, vae_elbo
from vae_utils.train_config import TrainConfig
from vae_utils.training import TrainingDivergedError, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # test_training, whatever pytest's import mode
from test_training import pattern_dataset as stripes  # noqa: E402  (four learnable stripe patterns)

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


# ---------------------------------------------------------------------------- CUDA graphs in fit
class CountingGraphedStep(GraphedStep):
    made: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        CountingGraphedStep.made.append(self)


def test_graphed_steps_match_eager_steps_exactly():
    """A deterministic step (SGD on least squares) replayed from a graph gives the eager weights."""
    def run(graphed: bool):
        w = torch.zeros(784, 1, device="cuda")
        target = torch.linspace(0, 1, 784, device="cuda").view(784, 1)

        def step(x):
            flat = x.reshape(len(x), -1)
            residual = flat @ w - flat @ target
            w.sub_(1e-4 * flat.T @ residual)
            return torch.stack((torch.ones_like(residual).sum(), residual.square().sum()))

        batches = list(stripes(1000).to("cuda").batches(64, shuffle=False))  # 15 of 64 and one of 40
        runner = GraphedStep(step) if graphed else step
        totals = [sum(runner(x).clone() for x in batches) for _ in range(2)]
        return w, totals, runner

    w_eager, totals_eager, _ = run(False)
    w_graph, totals_graph, runner = run(True)
    assert runner.replays == 2 * 15 - 3  # three warm-up steps, then every full batch; the tail is eager
    torch.testing.assert_close(w_graph, w_eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(totals_graph, totals_eager):
        assert a[0] == 1000
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_fit_replays_from_a_cuda_graph_and_learns_like_the_eager_loop(monkeypatch):
    monkeypatch.setattr(cuda_graphs, "GraphedStep", CountingGraphedStep)
    CountingGraphedStep.made.clear()
    train, test = stripes(2000), stripes(500, seed=1)
    histories = {}
    for graphed in (True, False):
        model = VAE(VAEConfig(latent_dim=4, hidden_dims=(64,), seed=0))
        config = TrainConfig(epochs=3, batch_size=64, lr=3e-3, device="cuda", cuda_graph=graphed)
        histories[graphed] = fit(model, train, test, config, progress=False).history
    (runner,) = CountingGraphedStep.made  # made for the graphed run only
    assert runner.replays == 3 * (2000 // 64) - 3
    graph, eager = histories[True], histories[False]
    assert graph.train_elbo[-1] > graph.train_elbo[0] + 20  # it learns
    for a, b in zip(graph.test_elbo, eager.test_elbo):  # and like the eager loop (other noise draws)
        assert abs(a - b) < 0.03 * abs(b), (graph.test_elbo, eager.test_elbo)


class NaNSwitch(VAE):
    """A VAE whose encoder output is multiplied by a device tensor; set it to NaN to poison a step."""

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("scale", torch.ones(()))

    def posterior(self, x, y=None):
        q = super().posterior(x, y)
        return q._replace(mu=q.mu * self.scale)


def test_nan_inside_a_replayed_step_is_caught_with_its_epoch_and_step():
    model = NaNSwitch(VAEConfig(latent_dim=4, hidden_dims=(32,), seed=0))
    after_epoch_1 = {}

    def poison_after_epoch_1(history):
        if len(history) == 1:
            after_epoch_1.update({k: v.clone() for k, v in model.state_dict().items()})
            model.scale.fill_(float("nan"))  # in place: the graph reads this tensor at every replay

    with pytest.raises(TrainingDivergedError) as info:
        fit(model, stripes(640), None, TrainConfig(epochs=3, batch_size=64, device="cuda"),
            callback=poison_after_epoch_1, progress=False)
    assert (info.value.epoch, info.value.step) == (2, 1)
    for key, value in model.state_dict().items():
        if key != "scale":
            assert torch.equal(value, after_epoch_1[key]), key


def test_fit_replays_a_flow_vae_and_a_conditional_vae_step_from_a_cuda_graph(monkeypatch):
    """The one training step for every model: a flow posterior, and (x, y) batches copied into the graph."""
    from vae_utils import conditional, flows

    monkeypatch.setattr(cuda_graphs, "GraphedStep", CountingGraphedStep)
    CountingGraphedStep.made.clear()
    data = stripes(640)  # 10 full batches of 64 an epoch
    small = dict(latent_dim=4, hidden_dims=(32,), seed=0)
    for model in (flows.FlowVAE(flows.FlowVAEConfig(**small)),
                  conditional.ConditionalVAE(conditional.ConditionalVAEConfig(**small, num_classes=4))):
        history = fit(model, data, data, TrainConfig(epochs=3, batch_size=64, lr=3e-3, device="cuda"),
                      progress=False).history
        assert history.train_elbo[-1] > history.train_elbo[0] + 20, (type(model).__name__, history.train_elbo)
    assert [runner.replays for runner in CountingGraphedStep.made] == [3 * 10 - 3] * 2


def test_fit_uses_no_graph_with_warmup_or_a_plain_optimizer(monkeypatch):
    monkeypatch.setattr(cuda_graphs, "GraphedStep", CountingGraphedStep)
    CountingGraphedStep.made.clear()
    model = VAE(VAEConfig(latent_dim=4, hidden_dims=(32,)))
    fit(model, stripes(320), None, TrainConfig(epochs=1, device="cuda", kl_warmup_epochs=1), progress=False)
    fit(model, stripes(320), None, TrainConfig(epochs=1, device="cuda"),
        optimizer=torch.optim.Adam(model.parameters()), progress=False)
    assert CountingGraphedStep.made == []


def test_test_elbos_are_the_same_number_on_cpu_and_gpu(exact_float32):
    """The evaluation set's binarization and the evaluation noise are drawn on the CPU, for every model kind."""
    from vae_utils import conditional, evaluation, flows

    data = stripes(300, seed=2)
    config = VAEConfig(latent_dim=4, hidden_dims=(32,), seed=0)
    evaluations = [
        (VAE(config), evaluation.evaluate_elbo),
        (flows.FlowVAE(flows.FlowVAEConfig(**config.to_dict())), evaluation.evaluate_elbo),
        (conditional.ConditionalVAE(conditional.ConditionalVAEConfig(latent_dim=4, hidden_dims=(32,), num_classes=4)),
         evaluation.evaluate_elbo),
    ]
    for model, evaluate in evaluations:
        on_cpu = evaluate(model, data, seed=3)
        on_gpu = evaluate(copy.deepcopy(model).to("cuda"), data, seed=3)
        for key in ("elbo", "reconstruction", "kl"):
            assert on_gpu[key] == pytest.approx(on_cpu[key], rel=1e-4, abs=1e-3), (type(model).__name__, key)


def test_compiled_objective_inside_the_cuda_graph_learns_like_the_eager_loop(monkeypatch):
    """TrainConfig(compile=True) on CUDA: inductor's Triton kernels, recorded in fit's CUDA graph."""
    monkeypatch.setattr(cuda_graphs, "GraphedStep", CountingGraphedStep)
    CountingGraphedStep.made.clear()
    torch._dynamo.reset()
    train, test = stripes(2048), stripes(500, seed=1)  # 32 full batches: one shape to compile
    histories = {}
    for compiled in (True, False):
        model = VAE(VAEConfig(latent_dim=4, hidden_dims=(64,), seed=0))
        config = TrainConfig(epochs=3, batch_size=64, lr=3e-3, device="cuda", compile=compiled)
        histories[compiled] = fit(model, train, test, config, progress=False).history
    assert [runner.replays for runner in CountingGraphedStep.made] == [3 * 32 - 3] * 2
    compiled, eager = histories[True], histories[False]
    assert compiled.train_elbo[-1] > compiled.train_elbo[0] + 20
    assert abs(compiled.test_elbo[-1] - eager.test_elbo[-1]) < 0.03 * abs(eager.test_elbo[-1]), (
        compiled.test_elbo, eager.test_elbo)
