"""The conditional VAE (vae_utils.conditional): shapes, the ELBO by hand, the label's effect, batches with
labels, training through vu.train_epoch and vu.fit, the one checkpoint format, widgets and bad inputs."""

import math

import pytest
import torch

import vae_utils as vu
from vae_utils.conditional import ConditionalVAE, ConditionalVAEConfig, log_class_posterior, style_transfer
from vae_utils.widgets import class_explorer, style_explorer
from vae_utils.objectives import elbo_objective

K = 4  # classes in the small models


def small(architecture="mlp", **kw):
    hidden = (16,) if architecture == "mlp" else (4, 8)
    config = ConditionalVAEConfig(latent_dim=3, architecture=architecture, hidden_dims=hidden,
                                  image_shape=(1, 8, 8), num_classes=K, **kw)
    return ConditionalVAE(config)


def toy_data(n=24, seed=0):
    """Class k: rows 2k and 2k+1 bright (gray 240), the rest dark (gray 10); learnable from the label."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (n,), generator=g)
    images = torch.full((n, 1, 8, 8), 10, dtype=torch.uint8)
    for i, k in enumerate(labels.tolist()):
        images[i, 0, 2 * k : 2 * k + 2] = 240
    return vu.ImageDataset(images, labels, [f"c{k}" for k in range(K)], "toy")


def batch(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, K, (n,), generator=g)


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_shapes(architecture):
    model = small(architecture)
    x, y = batch()
    mu, logvar = model.encode(x, y)
    assert mu.shape == logvar.shape == (5, 3)
    z = model.reparameterize(mu, logvar, n_samples=7)
    assert z.shape == (7, 5, 3)
    assert model.decode(z, y).shape == (7, 5, 1, 8, 8)
    assert model.decode(z[0], y).shape == (5, 1, 8, 8)
    assert model.decode(z[0, 0], 2).shape == (1, 8, 8)
    assert model.log_joint(x, z, y).shape == (7, 5)
    out = model(x, y)
    assert out.decoded.shape == (5, 1, 8, 8) and out.z.shape == (5, 3)
    assert model.reconstruct(x, y).shape == (5, 1, 8, 8)


def test_config_round_trip_and_defaults():
    config = ConditionalVAEConfig(architecture="conv", num_classes=3)
    assert config.hidden_dims == (32, 64) and config.num_classes == 3
    assert ConditionalVAEConfig.from_dict(config.to_dict()) == config
    assert isinstance(config, vu.VAEConfig)


def test_same_seed_same_weights():
    a, b = small(seed=5), small(seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), small(seed=6).parameters()))


def test_elbo_equals_hand_computation():
    """reconstruction = Bernoulli log-likelihood summed over pixels at z = mu + sigma * eps, with the
    label one-hot concatenated by hand; KL = 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2)."""
    model = small()
    x, y = batch(3)
    x = torch.bernoulli(x, generator=torch.Generator().manual_seed(2))
    terms = vu.vae_elbo(model, x, y=y, generator=torch.Generator().manual_seed(3))

    onehot = torch.zeros(3, K)
    onehot[torch.arange(3), y] = model.config.label_scale
    h = model.encoder.trunk(torch.cat([x.reshape(3, -1), onehot], 1))
    mu, logvar = model.encoder.mu_head(h), model.encoder.logvar_head(h)
    eps = torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(3))[0]
    z = mu + torch.exp(0.5 * logvar) * eps
    p = torch.sigmoid(model.decoder(torch.cat([z, onehot], 1))).reshape(3, -1)
    reconstruction = (x.reshape(3, -1) * p.log() + (1 - x.reshape(3, -1)) * (1 - p).log()).sum(1)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
    torch.testing.assert_close(terms.reconstruction, reconstruction, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms.kl, kl)
    torch.testing.assert_close(terms.elbo, reconstruction - kl, rtol=1e-5, atol=1e-4)


def test_iw_bound_with_k1_is_the_elbo_and_rises_with_k():
    model = small()
    data = toy_data(16).binarized(0)
    x, y = data.float_images(), data.labels
    elbo = vu.evaluate_elbo(model, (x, y))["elbo"]
    one = vu.estimate_log_likelihood(model, (x, y), k=1, progress=False, seed=0)
    assert one.mean().item() == pytest.approx(elbo, abs=3.0)  # one sample each: noisy, same expectation
    many = vu.estimate_log_likelihood(model, (x, y), k=200, progress=False)
    assert many.shape == (16,)
    assert many.mean() > elbo
    from_dataset = vu.estimate_log_likelihood(model, toy_data(16), k=200, progress=False)
    torch.testing.assert_close(from_dataset, many)  # the data set is binarized with the same seed


def test_decoder_uses_the_label():
    model = small()
    z = torch.randn(5, 3)
    a, b = model.decode(z, torch.zeros(5, dtype=torch.long)), model.decode(z, torch.ones(5, dtype=torch.long))
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(model.decode(z, 1), b)  # an int label means "this label for all"


def test_encoder_uses_the_label():
    model = small("conv")
    x, _ = batch(4)
    mu_a, _ = model.encode(x, torch.zeros(4, dtype=torch.long))
    mu_b, _ = model.encode(x, torch.full((4,), 3))
    assert (mu_a - mu_b).abs().max() > 1e-4


def test_sample_shapes_and_labels():
    model = small()
    assert model.sample(6, 2).shape == (6, 1, 8, 8)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    g = torch.Generator().manual_seed(0)
    images = model.sample(6, labels, generator=g)
    assert images.shape == (6, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))  # the same codes, decoded by hand
    torch.testing.assert_close(images, torch.sigmoid(model.decode(z, labels)))
    with pytest.raises(ValueError, match="shape"):
        model.sample(6, torch.tensor([0, 1]))


def test_style_transfer_decodes_the_code_with_every_label():
    model = small()
    x, y = batch(2)
    rows = style_transfer(model, x, y)
    assert rows.shape == (2, K, 1, 8, 8)
    mu, _ = model.encode(x, y)
    torch.testing.assert_close(rows[1, 2], torch.sigmoid(model.decode(mu[1], 2)))
    # decoding with the image's own label is its reconstruction
    torch.testing.assert_close(rows[0, int(y[0])], model.reconstruct(x, y)[0])


def test_batches_with_labels_match_the_batches_without():
    data = toy_data(25)
    pairs = list(data.batches(10, generator=torch.Generator().manual_seed(4), binarize=True, labels=True))
    plain = list(data.batches(10, generator=torch.Generator().manual_seed(4), binarize=True))
    assert [x.shape[0] for x, _ in pairs] == [10, 10, 5]
    for (x, y), x_plain in zip(pairs, plain):
        assert torch.equal(x, x_plain)
    y_all = torch.cat([y for _, y in pairs])
    assert sorted(y_all.tolist()) == sorted(data.labels.tolist())
    # each label belongs to its image: find every gray image back in the unshuffled data
    for x, y in data.batches(10, generator=torch.Generator().manual_seed(4), labels=True):
        for image, label in zip(x, y):
            index = (data.float_images() == image).flatten(1).all(1).nonzero()[0, 0]
            assert data.labels[index] == label
    ordered = list(data.batches(10, shuffle=False, labels=True))
    assert torch.equal(torch.cat([y for _, y in ordered]), data.labels)


def test_train_epoch_on_batches_with_labels_raises_the_elbo():
    torch.manual_seed(0)
    model, data = small(), toy_data(64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = vu.evaluate_elbo(model, data)["elbo"]
    for _ in range(15):
        sums = vu.train_epoch(model, data.batches(16, binarize=True, labels=True), optimizer, elbo_objective())
    assert sums["n"].item() == 64
    assert vu.evaluate_elbo(model, data)["elbo"] > before + 10


def test_fit_load_or_train_and_the_checkpoint_serve_a_conditional_vae(tmp_path):
    data = toy_data(32)
    config = vu.TrainConfig(epochs=2, batch_size=8, device="cpu")
    result = vu.fit(small(), data, data, config, progress=False)
    assert len(result.history) == 2 and result.history.test_elbo[-1] is not None
    path = vu.save_checkpoint(tmp_path / "c.pt", result.model, result.optimizer, result.history, config,
                              train_data=data)
    loaded = vu.load_checkpoint(path, "cpu")
    assert isinstance(loaded.model, ConditionalVAE) and loaded.model.config == result.model.config
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key])
    assert loaded.history.to_dict() == result.history.to_dict() and loaded.train_config == config
    # load_or_train reuses it for the same run, retrains for another
    again = vu.load_or_train(path, result.model.config, config, data, progress=False)
    assert isinstance(again.model, ConditionalVAE) and again.history.seconds == result.history.seconds
    other = vu.load_or_train(path, result.model.config, vu.TrainConfig(epochs=1, batch_size=8, device="cpu"), data,
                             progress=False)
    assert len(other.history) == 1 and len(vu.load_checkpoint(path).history) == 1


def test_fit_trains_a_conditional_vae_on_the_iw_objective_and_with_a_warm_up():
    data = toy_data(32)
    for config in (vu.TrainConfig(epochs=2, batch_size=8, objective="iw", k=3, device="cpu"),
                   vu.TrainConfig(epochs=2, batch_size=8, kl_warmup_epochs=1, device="cpu")):
        history = vu.fit(small(), data, data, config, progress=False).history
        assert len(history) == 2 and all(math.isfinite(v) for v in history.train_objective)


def test_widgets_redraw():
    model = small()
    explorer = class_explorer(model, dims=2)
    first = explorer.image.value
    explorer.buttons.value = 3
    assert explorer.image.value != first
    before = bytes(explorer.image.value)
    explorer.sliders[0].value = 2.0
    assert len(explorer.sliders) == 2 and bytes(explorer.image.value) != before
    assert bytes(explorer.image.value).startswith(b"\x89PNG")
    x, y = batch(3)
    styles = style_explorer(model, x, y)
    first = styles.image.value
    styles.picker.value = 2
    assert styles.image.value != first


@pytest.mark.parametrize(
    "labels, error, message",
    [
        (torch.tensor([0, 1, 2, 3, 4]), ValueError, r"0 \.\. 3"),
        (torch.tensor([0, -1, 2, 3, 1]), ValueError, r"0 \.\. 3"),
        (torch.tensor([0, 1, 2]), ValueError, r"shape \[5\]"),
        (torch.zeros(5), TypeError, "integer class indices"),
        ("dress", TypeError, "labels must be"),
    ],
)
def test_bad_labels(labels, error, message):
    model = small()
    x, _ = batch(5)
    with pytest.raises(error, match=message):
        model.encode(x, labels)


def test_bad_inputs():
    model = small()
    x, y = batch(5)
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\]"):
        model.encode(x.view(5, 64), y)
    with pytest.raises(ValueError, match="0..255"):
        model.encode(x * 255, y)
    with pytest.raises(ValueError, match=r"\[\.\.\., B, 3\]"):
        model.decode(torch.zeros(5, 4), y)
    with pytest.raises(ValueError, match=r"0 \.\. 3"):
        model.sample(2, K)
    with pytest.raises(ValueError, match="positive int"):
        model.sample(0, 1)
    with pytest.raises(ValueError, match="label_scale"):
        ConditionalVAEConfig(label_scale=0)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        ConditionalVAEConfig(num_classes=1)
    with pytest.raises(TypeError, match="ConditionalVAEConfig"):
        ConditionalVAE(vu.VAEConfig())
    with pytest.raises(TypeError, match="needs the labels"):
        vu.vae_elbo(model, x)
    with pytest.raises(TypeError, match="needs the labels"):
        vu.evaluate_elbo(model, x)
    with pytest.raises(TypeError, match="takes no labels"):
        vu.vae_elbo(vu.VAE(vu.VAEConfig(latent_dim=3, hidden_dims=(16,), image_shape=(1, 8, 8))), x, y=y)
    with pytest.raises(ValueError, match="num_classes=4"):
        vu.fit(model, vu.ImageDataset(toy_data().images, torch.full((24,), 7), [], "x"), progress=False)
    with pytest.raises(ValueError, match="k"):
        vu.estimate_log_likelihood(model, (x, y), k=0)
    assert math.isfinite(vu.evaluate_elbo(model, (x, y))["elbo"])


def test_log_class_posterior_is_bayes_rule():
    model = small()
    data = toy_data(6).binarized(0)
    x = data.float_images()
    log_post = log_class_posterior(model, x, k=20, progress=False)
    assert log_post.shape == (6, K)
    torch.testing.assert_close(log_post.exp().sum(1), torch.ones(6))
    columns = [vu.estimate_log_likelihood(model, (x, torch.full((6,), c)), k=20, progress=False) for c in range(K)]
    by_hand = torch.stack(columns, 1)
    torch.testing.assert_close(log_post, by_hand - by_hand.logsumexp(1, keepdim=True))


def test_trained_model_classifies_by_bayes_rule():
    torch.manual_seed(0)
    data = toy_data(64)
    result = vu.fit(small(), data, config=vu.TrainConfig(epochs=30, batch_size=16, lr=1e-2, device="cpu"),
                    progress=False)
    test = toy_data(32, seed=9).binarized(0)
    predicted = log_class_posterior(result.model, test.float_images(), k=20, progress=False).argmax(1)
    assert (predicted == test.labels).float().mean() > 0.9  # the classes differ in which rows are bright


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)")
def test_on_cuda():
    model, data = small().cuda(), toy_data(32).to("cuda")
    optimizer = torch.optim.Adam(model.parameters())
    batches = data.batches(8, generator=torch.Generator().manual_seed(0), binarize=True, labels=True)  # a CPU generator
    sums = vu.train_epoch(model, batches, optimizer, elbo_objective())
    assert sums["n"].device.type == "cuda" and sums["n"].item() == 32
    assert model.sample(4, [0, 1, 2, 3]).device.type == "cuda"
    x, y = data.float_images()[:3], data.labels[:3]
    assert style_transfer(model, x, y).shape == (3, K, 1, 8, 8)
    assert vu.estimate_log_likelihood(model, data, k=5, progress=False).device.type == "cpu"
    assert len(vu.fit(small(), toy_data(32), config=vu.TrainConfig(epochs=1, batch_size=8, device="cuda"),
                      progress=False).history) == 1  # its step replayed from a CUDA graph, labels included
    assert log_class_posterior(model, x, k=5, progress=False).shape == (3, K)
    class_explorer(model).buttons.value = 1
