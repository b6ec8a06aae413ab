"""Training: fit's history, warm-up, seeding, divergence and interrupts; evaluate_elbo."""

from __future__ import annotations

import math
import os

import pytest
import torch

from vae_utils.data import DatasetNotFoundError, ImageDataset, load_dataset
from vae_utils.model import VAE, VAEConfig
from vae_utils.objectives import vae_elbo
from vae_utils.training import (
    FitResult,
    History,
    TrainConfig,
    TrainingDivergedError,
    evaluate_elbo,
    fit,
)

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
    torch.manual_seed(seed)
    return VAE(SMALL)


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

    import vae_utils.training as training

    seen = []
    original = training.vae_elbo

    def spy(model, x, beta=1.0, **kwargs):  # record the beta of each training step
        if model.training:
            seen.append(beta)
        return original(model, x, beta=beta, **kwargs)

    monkeypatch.setattr(training, "vae_elbo", spy)
    fit(small_model(), pattern_dataset(64), None, TrainConfig(epochs=2, batch_size=16, kl_warmup_epochs=1.5),
        progress=False)
    assert seen == pytest.approx([min(1.0, step / 6) for step in range(1, 9)])


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

    def encode(self, x):
        mu, logvar = super().encode(x)
        if self.training:
            self.training_calls += 1
            if self.training_calls >= self.bad_call:
                mu = mu * float("nan")
        return mu, logvar


def test_nan_loss_raises_with_epoch_and_step_and_keeps_the_last_good_epoch():
    torch.manual_seed(0)
    model = NaNAfter(SMALL, bad_call=7)  # 4 steps per epoch: the 7th step is epoch 2, step 3
    after_epoch_1 = {}

    def remember(history):
        if len(history) == 1:
            after_epoch_1.update({k: v.clone() for k, v in model.state_dict().items()})

    with pytest.raises(TrainingDivergedError) as info:
        fit(model, pattern_dataset(64), pattern_dataset(16, 1), TrainConfig(epochs=3, batch_size=16),
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

        def encode(self, x):
            if self.training:
                InterruptAt.calls += 1
                if InterruptAt.calls == 6:  # epoch 2, step 2
                    raise KeyboardInterrupt
            return super().encode(x)

    torch.manual_seed(0)
    result = fit(InterruptAt(SMALL), pattern_dataset(64), None, TrainConfig(epochs=3, batch_size=16), progress=False)
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


@pytest.mark.slow
def test_short_training_on_real_fashion_mnist_lowers_the_test_loss():
    train = _real_fashion_mnist("train").subset(2000)
    test = _real_fashion_mnist("test").subset(500)
    torch.manual_seed(0)
    model = VAE()  # the default 784-400-20 MLP
    before = evaluate_elbo(model, test)["elbo"]
    result = fit(model, train, test, TrainConfig(epochs=2, device="cpu"), progress=False)
    after = evaluate_elbo(result.model, test)["elbo"]
    assert result.history.test_elbo[-1] == pytest.approx(after, abs=1e-3)  # fit evaluates the same way
    # An untrained decoder is near 784 * log 2 = 543 nats per image; two short epochs reach ~350.
    assert -after < -before - 100, (before, after)
    assert result.history.test_elbo[1] > result.history.test_elbo[0]
