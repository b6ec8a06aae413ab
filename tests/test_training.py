"""Training: train_epoch, fit's history, warm-up, seeding, divergence, interrupts, input checks,
progress and host syncs; the ELBO and IW objectives; evaluate_elbo."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch

import vae_utils as vu
import vae_utils.training as training
from vae_utils.data import DatasetNotFoundError, ImageDataset, load_dataset
from vae_utils.evaluation import evaluate_elbo
from vae_utils.model import VAE, VAEConfig
from vae_utils.objectives import elbo_objective, vae_elbo
from vae_utils.train_config import TrainConfig
from vae_utils.training import FitResult, History, TrainingDivergedError, fit, train_epoch

SMALL = VAEConfig(latent_dim=4, hidden_dims=(32,))


def pattern_dataset(n: int, seed: int = 0) -> ImageDataset:
    """Four stripe patterns with gray-level noise: easy to learn, so training visibly helps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    rows = torch.arange(28).view(1, 28, 1)
    stripes = ((rows // 7) == labels.view(n, 1, 1)).float().expand(n, 28, 28)
    gray = (0.1 + 0.8 * stripes + 0.1 * torch.rand(n, 28, 28, generator=g)).clamp(0, 1)
    images = (gray * 255).round().to(torch.uint8).unsqueeze(1)
    return ImageDataset(images, labels, ["top", "upper", "lower", "bottom"], "patterns")


def small_model(seed: int = 0) -> VAE:
    return VAE(VAEConfig(latent_dim=4, hidden_dims=(32,), seed=seed))


def test_fit_records_a_consistent_history():
    train, test = pattern_dataset(200), pattern_dataset(50, seed=1)
    calls = []
    result = fit(small_model(), train, test, TrainConfig(epochs=3, batch_size=32, lr=3e-3, device="cpu"),
                 callback=lambda h: calls.append(len(h)), progress=False)
    assert isinstance(result, FitResult) and not result.interrupted
    h = result.history
    assert calls == [1, 2, 3]
    assert h.epoch == [1, 2, 3] and h.beta == [1.0, 1.0, 1.0]
    for key, values in h.to_dict().items():
        assert len(values) == 3 and all(math.isfinite(v) for v in values), key
    for split in ("train", "test"):
        for elbo, rec, kl in zip(h.to_dict()[f"{split}_elbo"], h.to_dict()[f"{split}_reconstruction"],
                                 h.to_dict()[f"{split}_kl"]):
            assert elbo == pytest.approx(rec - kl, rel=1e-5)
            assert kl >= 0 and rec <= 0  # Bernoulli log-likelihood of binary data is <= 0
    assert h.test_elbo[-1] > h.test_elbo[0]
    assert h.last() == {key: values[-1] for key, values in h.to_dict().items()}
    assert isinstance(result.optimizer, torch.optim.Adam)


def test_history_without_test_data_and_round_trip():
    result = fit(small_model(), pattern_dataset(64), None, TrainConfig(epochs=1, batch_size=64), progress=False)
    h = result.history
    assert h.test_elbo == [None] and h.test_kl == [None]
    assert History.from_dict(h.to_dict()) == h
    assert History().last() == {}
    with pytest.raises(ValueError, match="same length"):
        History.from_dict({"epoch": [1, 2], "train_elbo": [1.0]})


def test_train_config_validation_and_round_trip():
    config = TrainConfig(epochs=2, lr=1e-2, device="cpu")
    assert TrainConfig.from_dict(config.to_dict()) == config
    for bad in ({"lr": 0}, {"batch_size": 0}, {"epochs": -1}, {"beta": -1.0}, {"lr": float("nan")}):
        with pytest.raises(ValueError, match="TrainConfig"):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="Unknown TrainConfig field"):
        TrainConfig.from_dict({"epoch": 3})


def test_kl_warmup_ramps_beta_per_step(monkeypatch):
    # 4 steps per epoch and a 2-epoch warm-up: beta after epoch 1 is 4/8 of config.beta, then all of it.
    config = TrainConfig(epochs=3, batch_size=16, kl_warmup_epochs=2, beta=2.0)
    h = fit(small_model(), pattern_dataset(64), None, config, progress=False).history
    assert h.beta == [1.0, 2.0, 2.0]

    seen = []
    original = training.elbo_terms

    def spy(reconstruction, kl, beta=1.0):  # fit reweighs the KL of each step whose beta is not 1
        seen.append(beta)
        terms = original(reconstruction, kl, beta)
        assert torch.equal(terms.objective, reconstruction - beta * kl)
        return terms

    monkeypatch.setattr(training, "elbo_terms", spy)
    fit(small_model(), pattern_dataset(64), None, TrainConfig(epochs=2, batch_size=16, kl_warmup_epochs=1.5),
        progress=False)
    assert seen == pytest.approx([step / 6 for step in range(1, 6)])  # steps 6-8 have beta = 1


def test_same_seed_same_run():
    def run():
        return fit(small_model(1), pattern_dataset(96), pattern_dataset(32, 1),
                   TrainConfig(epochs=2, batch_size=32, seed=5), progress=False)

    a, b = run(), run()
    assert a.history.train_elbo == b.history.train_elbo and a.history.test_elbo == b.history.test_elbo
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    c = fit(small_model(1), pattern_dataset(96), None, TrainConfig(epochs=2, batch_size=32, seed=6), progress=False)
    assert c.history.train_elbo != a.history.train_elbo


class NaNAfter(VAE):
    """A VAE whose encoder returns NaN from the ``bad_call``-th training step on (1-based)."""

    def __init__(self, config, bad_call):
        super().__init__(config)
        self.bad_call = bad_call
        self.training_calls = 0

    def posterior(self, x, y=None):
        q = super().posterior(x, y)
        if self.training:
            self.training_calls += 1
            if self.training_calls >= self.bad_call:
                q = q._replace(mu=q.mu * float("nan"))
        return q


def test_nan_loss_raises_with_epoch_and_step_and_keeps_the_last_good_epoch():
    torch.manual_seed(0)
    model = NaNAfter(SMALL, bad_call=7)  # 4 steps per epoch: the 7th step is epoch 2, step 3
    after_epoch_1 = {}

    def remember(history):
        if len(history) == 1:
            after_epoch_1.update({k: v.clone() for k, v in model.state_dict().items()})

    with pytest.raises(TrainingDivergedError) as info:
        # cuda_graph=False: the NaN comes from Python code that runs at every step, which a replayed
        # CUDA graph skips (tests/test_gpu.py poisons a replayed step through a device tensor instead).
        fit(model, pattern_dataset(64), pattern_dataset(16, 1), TrainConfig(epochs=3, batch_size=16, cuda_graph=False),
            callback=remember, progress=False)
    err = info.value
    assert (err.epoch, err.step) == (2, 3)
    message = str(err)
    assert "epoch 2, step 3" in message and "lower the learning rate" in message and "[0, 1]" in message
    assert err.history.epoch == [1] and math.isfinite(err.history.test_elbo[0])
    assert err.model is model
    for key, value in model.state_dict().items():  # restored to the end of epoch 1: finite, identical
        assert torch.equal(value, after_epoch_1[key]), key
    for state in err.optimizer.state.values():
        assert all(torch.isfinite(t).all() for t in state.values() if torch.is_tensor(t))


def test_huge_learning_rate_diverges():
    with pytest.raises(TrainingDivergedError, match=r"epoch \d+, step \d+") as info:
        fit(small_model(), pattern_dataset(64), None, TrainConfig(epochs=5, batch_size=16, lr=1e12), progress=False)
    assert info.value.epoch >= 1 and 1 <= info.value.step <= 4


def test_keyboard_interrupt_in_callback_returns_what_is_done():
    def stop_after_two(history):
        if len(history) == 2:
            raise KeyboardInterrupt

    result = fit(small_model(), pattern_dataset(64), pattern_dataset(16, 1), TrainConfig(epochs=5, batch_size=16),
                 callback=stop_after_two, progress=False)
    assert result.interrupted
    assert result.history.epoch == [1, 2]
    assert isinstance(result.model, VAE)


def test_keyboard_interrupt_mid_epoch_drops_the_partial_epoch():
    class InterruptAt(VAE):
        calls = 0

        def posterior(self, x, y=None):
            if self.training:
                InterruptAt.calls += 1
                if InterruptAt.calls == 6:  # epoch 2, step 2
                    raise KeyboardInterrupt
            return super().posterior(x, y)

    torch.manual_seed(0)
    config = TrainConfig(epochs=3, batch_size=16, cuda_graph=False)  # the interrupt is raised by Python code per step
    result = fit(InterruptAt(SMALL), pattern_dataset(64), None, config, progress=False)
    assert result.interrupted and result.history.epoch == [1]
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_evaluate_elbo_matches_a_direct_computation():
    torch.manual_seed(0)
    model = VAE(SMALL)
    data = pattern_dataset(30)
    got = evaluate_elbo(model, data, batch_size=7, binarize_seed=3, seed=11)
    # The same thing by hand: binarize with seed 3, one reparameterized sample per example, seed 11.
    x = data.binarized(3).float_images()
    torch.manual_seed(11)
    with torch.no_grad():
        terms = [vae_elbo(model, xb) for xb in x.split(7)]
    expected = {name: torch.cat([getattr(t, name) for t in terms]).mean().item()
                for name in ("elbo", "reconstruction", "kl")}
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-5)
    assert got["n"] == 30
    # A tensor of the same images gives the same answer; binarize_seed=None keeps the gray levels.
    assert evaluate_elbo(model, x, batch_size=7, seed=11)["elbo"] == pytest.approx(got["elbo"], rel=1e-5)
    gray = evaluate_elbo(model, data, binarize_seed=None, seed=11)
    assert gray["elbo"] != pytest.approx(got["elbo"], rel=1e-3)
    # Evaluating does not disturb the caller's random stream.
    torch.manual_seed(0)
    expected_draw = torch.rand(3)
    torch.manual_seed(0)
    evaluate_elbo(model, data)
    assert torch.equal(torch.rand(3), expected_draw)


def _real_fashion_mnist(split):
    try:
        return load_dataset("fashion-mnist", split, device="cpu", download=False)
    except DatasetNotFoundError:
        if os.environ.get("CI"):
            raise  # CI installs dataset-fashion-mnist: missing data there is a failure, not a skip
        pytest.skip("Fashion-MNIST is not installed (sudo apt-get install dataset-fashion-mnist)")


NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)])
def test_short_training_on_real_fashion_mnist_lowers_the_test_loss(device):
    train = _real_fashion_mnist("train").subset(2000)
    test = _real_fashion_mnist("test").subset(500)
    torch.manual_seed(0)
    model = VAE()  # the default 784-400-20 MLP
    before = evaluate_elbo(model, test)["elbo"]
    result = fit(model, train, test, TrainConfig(epochs=2, device=device), progress=False)
    after = evaluate_elbo(result.model, test)["elbo"]
    assert result.history.test_elbo[-1] == pytest.approx(after, abs=1e-3)  # fit evaluates the same way
    # An untrained decoder is near 784 * log 2 = 543 nats per image; two short epochs reach ~350.
    assert -after < -before - 100, (before, after)
    assert result.history.test_elbo[1] > result.history.test_elbo[0]


# ----------------------------------------------------------------------------- train_epoch: the plain loop
def test_train_epoch_is_the_plain_loop():
    data = pattern_dataset(48).float_images()
    batches = list(data.split(16))
    reader, library = small_model(3), small_model(3)
    reader_opt = torch.optim.Adam(reader.parameters(), lr=1e-3)
    library_opt = torch.optim.Adam(library.parameters(), lr=1e-3)

    torch.manual_seed(7)  # the reparameterization noise: the same draws in both loops
    losses = []
    for x in batches:  # the loop a reader writes
        terms = vae_elbo(reader, x)
        loss = -terms.objective.mean()
        reader_opt.zero_grad()
        loss.backward()
        reader_opt.step()
        losses.append(loss.item())
    torch.manual_seed(7)
    sums = train_epoch(library, batches, library_opt)

    for p, q in zip(reader.parameters(), library.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert set(sums) == set(training.SUM_KEYS) and all(v.dim() == 0 for v in sums.values())
    assert sums["n"].item() == 48
    assert sums["objective"].item() / 48 == pytest.approx(-sum(losses) / 3, rel=1e-5)  # equal batch sizes
    assert sums["elbo"].item() == pytest.approx(sums["reconstruction"].item() - sums["kl"].item(), rel=1e-6)


def test_train_epoch_takes_any_objective():
    model = small_model()
    before = [p.clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    sums = train_epoch(model, pattern_dataset(32).float_images().split(8), optimizer, vu.objectives.iw_objective(4))
    assert sums["n"].item() == 32 and math.isfinite(sums["objective"].item())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ----------------------------------------------------------------------------- fit's extras
def test_fit_reads_the_device_once_per_epoch_whatever_the_number_of_batches(monkeypatch):
    """Host syncs (item, tolist, int/float/bool of a tensor) per fit do not grow with the batches."""
    counts = []
    for batch_size in (32, 4):  # 2 or 16 steps per epoch
        calls = []
        for name in ("item", "tolist", "__int__", "__float__", "__bool__"):
            original = getattr(torch.Tensor, name)

            def spy(self, *args, _original=original, _name=name, **kwargs):
                calls.append(_name)
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, spy)
        fit(small_model(), pattern_dataset(64), None, TrainConfig(epochs=2, batch_size=batch_size), progress=False)
        monkeypatch.undo()
        counts.append(len(calls))
    assert counts[0] == counts[1], counts
    assert counts[0] <= 2 * 2  # at most two reads per epoch (the sums with the bad-step record, the warm-up none)


class FakeBar:
    instances: list = []

    def __init__(self, total, **kwargs):
        self.total, self.updates, self.postfixes, self.closed = total, [], [], False
        FakeBar.instances.append(self)

    def update(self, n):
        self.updates.append(n)

    def set_postfix(self, postfix, **kwargs):
        self.postfixes.append(dict(postfix))

    def close(self):
        self.closed = True


def test_progress_bar_ticks_within_an_epoch_and_shows_the_loss_once_per_epoch(monkeypatch):
    import tqdm.auto

    FakeBar.instances = []
    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    fit(small_model(), pattern_dataset(200), pattern_dataset(20, 1), TrainConfig(epochs=2, batch_size=4), progress=True)
    (bar,) = FakeBar.instances
    assert bar.total == 2 * 50 and sum(bar.updates) == 100 and bar.closed
    assert bar.updates == [20, 20, 10] * 2  # every 20 batches, then the rest of the epoch
    assert [p["epoch"] for p in bar.postfixes] == ["1/2", "2/2"] and all("test_elbo" in p for p in bar.postfixes)


def test_fit_checks_its_inputs_before_training():
    model = small_model()
    before = [p.clone() for p in model.parameters()]
    train = pattern_dataset(32)
    with pytest.raises(TypeError, match="fit trains a vae_utils model.*got Linear"):
        fit(torch.nn.Linear(2, 2), train, progress=False)
    with pytest.raises(TypeError, match="train_data must be an ImageDataset, got Tensor.*vu.ImageDataset"):
        fit(model, train.images, progress=False)
    small = ImageDataset(torch.zeros(4, 1, 14, 14, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), ["a"], "small")
    with pytest.raises(ValueError, match=r"test_data holds images of shape \(1, 14, 14\).*image_shape=\(1, 28, 28\)"):
        fit(model, train, small, progress=False)
    with pytest.raises(ValueError, match="test_data is empty"):
        fit(model, train, train.subset(0), progress=False)
    with pytest.raises(ValueError, match="optimizer holds none of the model's parameters"):
        fit(model, train, optimizer=torch.optim.Adam(small_model().parameters()), progress=False)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        fit(model, train, config={"epochs": 1}, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing trained


def test_keyboard_interrupt_during_set_up_returns_a_clean_result(monkeypatch):
    def interrupt(seed):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "seed_everything", interrupt)
    result = fit(small_model(), pattern_dataset(32), None, TrainConfig(epochs=2, batch_size=16), progress=False)
    assert result.interrupted and len(result.history) == 0
    assert isinstance(result.optimizer, torch.optim.Optimizer)


def test_interrupt_in_an_epoch_that_went_non_finite_restores_the_snapshot_and_says_so():
    class NaNThenInterrupt(NaNAfter):
        def posterior(self, x, y=None):
            if self.training and self.training_calls + 1 == 8:  # epoch 2, step 4 (after NaN at step 2)
                raise KeyboardInterrupt
            return super().posterior(x, y)

    model = NaNThenInterrupt(SMALL, bad_call=6)
    after_epoch_1 = {}

    def remember(history):
        after_epoch_1.update({k: v.clone() for k, v in model.state_dict().items()})

    with pytest.warns(RuntimeWarning, match="interrupted.*NaN or inf.*step 2.*restored to the end of the previous epoch"):
        result = fit(model, pattern_dataset(64), None, TrainConfig(epochs=3, batch_size=16, cuda_graph=False),
                     callback=remember, progress=False)  # Python code per step: no CUDA graph
    assert result.interrupted and result.history.epoch == [1]
    for key, value in model.state_dict().items():
        assert torch.equal(value, after_epoch_1[key]), key


def test_interrupt_in_a_healthy_epoch_gives_no_warning():
    class InterruptAt(VAE):
        calls = 0

        def posterior(self, x, y=None):
            if self.training:
                InterruptAt.calls += 1
                if InterruptAt.calls == 3:
                    raise KeyboardInterrupt
            return super().posterior(x, y)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = TrainConfig(epochs=2, batch_size=16, cuda_graph=False)  # Python code per step: no CUDA graph
        result = fit(InterruptAt(SMALL), pattern_dataset(64), None, config, progress=False)
    assert result.interrupted and result.history.epoch == []


def test_the_model_seed_makes_fit_repeatable_without_touching_the_global_rng():
    def run():
        history = fit(VAE(SMALL), pattern_dataset(64), pattern_dataset(16, 1), TrainConfig(epochs=1, batch_size=16),
                      progress=False).history.to_dict()
        return {key: values for key, values in history.items() if key != "seconds"}  # wall time differs

    torch.manual_seed(123)
    a = run()
    torch.manual_seed(456)  # a different global state: the same numbers (VAEConfig.seed and TrainConfig.seed decide)
    b = run()
    assert a == b
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    VAE(SMALL)
    assert torch.equal(torch.rand(2), expected)  # building a model leaves the global RNG alone
    other = VAE(VAEConfig(latent_dim=4, hidden_dims=(32,), seed=1))
    assert not torch.equal(other.encoder.mu_head.weight, VAE(SMALL).encoder.mu_head.weight)
    torch.manual_seed(5)
    c = VAE(VAEConfig(latent_dim=4, hidden_dims=(32,), seed=None))
    torch.manual_seed(5)
    assert torch.equal(c.encoder.mu_head.weight, VAE(VAEConfig(latent_dim=4, hidden_dims=(32,), seed=None)).encoder.mu_head.weight)


# ----------------------------------------------------------------------------- TrainConfig
@pytest.mark.parametrize(
    "field, value",
    [("epochs", True), ("epochs", 2.0), ("batch_size", True), ("batch_size", 2.5), ("batch_size", 0),
     ("kl_warmup_epochs", float("inf")), ("binarize", "no"), ("lr", "1e-3"), ("lr", None), ("lr", float("nan")),
     ("k", True), ("k", 0), ("seed", 1.5), ("beta", float("inf")), ("eval_batch_size", False), ("cuda_graph", "no"),
     ("compile", 1)],
)
def test_train_config_refuses_booleans_strings_and_non_finite_values(field, value):
    overrides = {field: value}
    if field == "k":
        overrides["objective"] = "iw"
    with pytest.raises(ValueError) as info:
        TrainConfig(**overrides)
    message = str(info.value)
    assert f"TrainConfig.{field}" in message and repr(value) in message, message
    assert "write" in message  # and how to write it


def test_train_config_objective_and_k():
    assert TrainConfig(objective="iw", k=5).k == 5
    assert TrainConfig.from_dict({"epochs": 2}).objective == "elbo"  # configs saved before these fields
    with pytest.raises(ValueError, match="objective must be one of"):
        TrainConfig(objective="iwae")
    with pytest.raises(ValueError, match="apply to objective='elbo' only"):
        TrainConfig(objective="iw", k=5, beta=2.0)
    with pytest.raises(ValueError, match="needs objective='iw'"):
        TrainConfig(k=5)


def test_iw_training_records_the_bound_and_the_true_elbo():
    h = fit(small_model(), pattern_dataset(64), None, TrainConfig(epochs=1, batch_size=16, objective="iw", k=8),
            progress=False).history
    assert h.train_objective[0] > h.train_elbo[0]  # the 8-sample bound sits above the ELBO estimate
    assert h.train_elbo[0] == pytest.approx(h.train_reconstruction[0] - h.train_kl[0], rel=1e-5)
    h1 = fit(small_model(), pattern_dataset(64), None, TrainConfig(epochs=1, batch_size=16), progress=False).history
    assert h1.train_objective == pytest.approx(h1.train_elbo)  # beta = 1: the objective is the ELBO


def _iw_data():
    """1,000 real Fashion-MNIST training images and 50 test images, or stripes when not installed."""
    try:
        train = load_dataset("fashion-mnist", "train", device="cpu", download=False).subset(1000)
        test = load_dataset("fashion-mnist", "test", device="cpu", download=False).subset(50)
        return train, test
    except DatasetNotFoundError:
        return pattern_dataset(1000), pattern_dataset(50, seed=1)


def test_iw_trained_model_has_at_least_the_elbo_trained_ones_log_likelihood():
    """IWAE vs VAE on the same budget (same model, data, seed, 20 steps): K = 1000 estimates of log p(x)."""
    train, test = _iw_data()
    config = VAEConfig(latent_dim=5, hidden_dims=(64,))
    estimates = {}
    for objective, k in (("elbo", 1), ("iw", 5)):
        trained = fit(VAE(config), train, None, TrainConfig(epochs=1, batch_size=50, lr=3e-3, device="cpu",
                                                            objective=objective, k=k), progress=False).model
        estimates[objective] = vu.estimate_log_likelihood(trained, test, k=1000, progress=False, seed=1)
    difference = estimates["iw"] - estimates["elbo"]  # per test image, paired
    se = (difference.std() / len(difference) ** 0.5).item()
    print(f"{train.name}: log p(x) K=1000, IW(k=5)-trained {estimates['iw'].mean():.2f}, ELBO-trained "
          f"{estimates['elbo'].mean():.2f}, difference {difference.mean():.2f} +- {se:.2f} (1 SE, {len(test)} images)")
    assert difference.mean().item() >= -3 * se


# ----------------------------------------------------------------------------- compile=True
def test_compiled_fit_learns_like_the_eager_one_with_warmup_and_iw():
    """TrainConfig(compile=True) runs the objective through torch.compile (a real inductor compile on this
    CPU): the same history contract, and it learns as well as the eager loop (its noise differs, so not
    the same numbers). With a KL warm-up beta still ramps: the compiled function never sees beta."""
    torch._dynamo.reset()
    train, test = pattern_dataset(192), pattern_dataset(50, seed=1)  # 6 full batches: one shape to compile
    for extra in ({}, {"kl_warmup_epochs": 1}, {"objective": "iw", "k": 3}):
        results = {}
        for compiled in (False, True):
            config = TrainConfig(epochs=3, batch_size=32, lr=3e-3, device="cpu", compile=compiled, **extra)
            results[compiled] = fit(small_model(), train, test, config, progress=False).history
        eager, compiled = results[False], results[True]
        assert compiled.beta == eager.beta, extra
        for h in (eager, compiled):
            assert h.test_elbo[-1] > h.test_elbo[0] + 20, (extra, h.test_elbo)
            assert all(e == pytest.approx(r - k, rel=1e-5) for e, r, k in
                       zip(h.test_elbo, h.test_reconstruction, h.test_kl))
        assert compiled.test_elbo[-1] == pytest.approx(eager.test_elbo[-1], rel=0.1), (extra, compiled.test_elbo,
                                                                                      eager.test_elbo)
        assert compiled.train_elbo != eager.train_elbo  # compiled really ran: inductor draws its own noise


def test_compile_without_a_working_compiler_says_how_to_fix_it(monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-c++-compiler",))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)  # a cached kernel would need no compiler
    torch._dynamo.reset()
    try:
        with pytest.raises(RuntimeError, match=r"compile=True.*C\+\+ compiler.*compile=False"):
            fit(small_model(), pattern_dataset(64), None, TrainConfig(epochs=1, batch_size=16, compile=True),
                progress=False)
    finally:
        torch._dynamo.reset()  # drop what was traced with the broken compiler
