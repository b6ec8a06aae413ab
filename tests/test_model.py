"""The VAE model, its configuration, and device/seed helpers."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import distributions as D

from vae_utils.device import pick_device, seed_everything
from vae_utils.model import VAE, VAEConfig, VAEOutput
from vae_utils.validation import check_images
from vae_utils.objectives import (
    gaussian_kl,
    importance_weighted_bound,
    monte_carlo_kl,
    negative_elbo_loss,
    vae_elbo,
)

CONFIGS = {
    "mlp-bernoulli": VAEConfig(),
    "conv-bernoulli": VAEConfig(architecture="conv", latent_dim=8),
    "mlp-gaussian-learned": VAEConfig(likelihood="gaussian", hidden_dims=(64, 32), latent_dim=5),
    "conv-gaussian-fixed": VAEConfig(architecture="conv", hidden_dims=(8, 16), likelihood="gaussian", decoder_std=0.2),
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(batch: int, shape=(1, 28, 28), seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, *shape, generator=gen(seed))


@pytest.fixture(params=list(CONFIGS), scope="module")
def model(request):
    torch.manual_seed(0)
    return VAE(CONFIGS[request.param])


# --------------------------------------------------------------------------- shapes
def test_default_model_is_the_reference_784_400_20_vae():
    vae = VAE()
    assert vae.config == VAEConfig(latent_dim=20, architecture="mlp", hidden_dims=(400,))
    linear_shapes = [tuple(m.weight.shape) for m in vae.modules() if isinstance(m, torch.nn.Linear)]
    # encoder 784 -> 400, heads 400 -> 20 (mu, logvar); decoder 20 -> 400 -> 784
    assert linear_shapes == [(400, 784), (20, 400), (20, 400), (400, 20), (784, 400)]


def test_shapes_of_every_method(model):
    c, h, w = model.config.image_shape
    d = model.config.latent_dim
    x = images(3)

    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, d)
    assert model.reparameterize(mu, logvar).shape == (3, d)
    z = model.reparameterize(mu, logvar, n_samples=4)
    assert z.shape == (4, 3, d)

    assert model.decode(z[0]).shape == (3, c, h, w)
    assert model.decode(z).shape == (4, 3, c, h, w)  # leading sample dim kept
    assert model.decode(z[0, 0]).shape == (c, h, w)  # a single latent (the slider widget)
    assert model.log_likelihood(x, model.decode(z)).shape == (4, 3)
    assert model.log_joint(x, z).shape == (4, 3)

    out = model(x)
    assert isinstance(out, VAEOutput)
    assert out.decoded.shape == (3, c, h, w)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (3, d)

    assert model.sample(5, generator=gen()).shape == (5, c, h, w)
    assert model.reconstruct(x).shape == (3, c, h, w)
    assert model.device == torch.device("cpu")


def test_conv_handles_other_image_shapes():
    vae = VAE(VAEConfig(architecture="conv", image_shape=(3, 32, 32), hidden_dims=(8, 16, 32), latent_dim=4))
    out = vae(images(2, (3, 32, 32)))
    assert out.decoded.shape == (2, 3, 32, 32)


def test_mean_image_is_a_probability_for_bernoulli_and_the_mean_for_gaussian():
    torch.manual_seed(0)
    bernoulli = VAE(CONFIGS["conv-bernoulli"])
    samples = bernoulli.sample(4, generator=gen())
    assert ((samples >= 0) & (samples <= 1)).all()
    gaussian = VAE(CONFIGS["mlp-gaussian-learned"])
    decoded = torch.randn(2, 1, 28, 28)
    assert torch.equal(gaussian.mean_image(decoded), decoded)


# --------------------------------------------------------------------------- densities
def test_log_joint_is_log_likelihood_plus_standard_normal_prior(model):
    x = images(2, seed=1)
    z = torch.randn(3, 2, model.config.latent_dim, generator=gen(1))
    expected = model.log_likelihood(x, model.decode(z)) + D.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(model.log_joint(x, z), expected)


def test_bernoulli_likelihood_matches_torch_distributions():
    vae = VAE(CONFIGS["mlp-bernoulli"])
    x = torch.bernoulli(images(2, seed=2))
    logits = 4 * torch.randn(3, 2, 1, 28, 28, generator=gen(2))
    expected = D.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(dim=(-3, -2, -1))
    torch.testing.assert_close(vae.log_likelihood(x, logits), expected)


def test_gaussian_fixed_std_likelihood_matches_torch_distributions():
    vae = VAE(CONFIGS["conv-gaussian-fixed"])
    assert vae.decoder_logvar is None  # nothing to learn
    x, mean = images(2, seed=3), images(2, seed=4)
    expected = D.Normal(mean, 0.2).log_prob(x).sum(dim=(-3, -2, -1))
    torch.testing.assert_close(vae.log_likelihood(x, mean), expected)


def test_gaussian_learned_logvar_is_a_per_pixel_parameter_with_a_gradient():
    vae = VAE(CONFIGS["mlp-gaussian-learned"])
    assert isinstance(vae.decoder_logvar, torch.nn.Parameter)
    assert vae.decoder_logvar.shape == (1, 28, 28)
    with torch.no_grad():
        vae.decoder_logvar.copy_(torch.randn(1, 28, 28, generator=gen(5)))
    x, mean = images(2, seed=3), images(2, seed=4)
    expected = D.Normal(mean, torch.exp(0.5 * vae.decoder_logvar)).log_prob(x).sum(dim=(-3, -2, -1))
    torch.testing.assert_close(vae.log_likelihood(x, mean), expected)
    negative_elbo_loss(vae_elbo(vae, x)).backward()
    assert vae.decoder_logvar.grad is not None and vae.decoder_logvar.grad.abs().sum() > 0


# --------------------------------------------------------------------------- ELBO on the model
def test_vae_elbo_averages_samples_and_uses_closed_form_kl(model):
    x = images(3, seed=6)
    elbo = vae_elbo(model, x, beta=0.3, n_samples=5, generator=gen(7))
    mu, logvar = model.encode(x)
    z = model.reparameterize(mu, logvar, n_samples=5, generator=gen(7))  # the same samples
    reconstruction = model.log_likelihood(x, model.decode(z)).mean(0)
    torch.testing.assert_close(elbo.reconstruction, reconstruction)
    torch.testing.assert_close(elbo.kl, gaussian_kl(mu, logvar))
    torch.testing.assert_close(elbo.objective, reconstruction - 0.3 * elbo.kl)

    mc = vae_elbo(model, x, n_samples=5, analytic_kl=False, generator=gen(7))
    torch.testing.assert_close(mc.kl, monte_carlo_kl(z, mu, logvar))
    torch.testing.assert_close(mc.reconstruction, reconstruction)


def test_iw_bound_with_k_1_equals_vae_elbo_estimate():
    torch.manual_seed(0)
    vae = VAE(CONFIGS["conv-bernoulli"])
    x = torch.bernoulli(images(4, seed=8))
    mu, logvar = vae.encode(x)
    bound = importance_weighted_bound(vae.log_joint, x, mu, logvar, k=1, generator=gen(9))
    elbo = vae_elbo(vae, x, n_samples=1, analytic_kl=False, generator=gen(9))  # same z
    torch.testing.assert_close(bound, elbo.elbo)


def test_reparameterized_gradient_matches_analytic_gradient():
    # E_q[z^2] = mu^2 + sigma^2 for q = N(mu, sigma^2): d/dmu = 2 mu, d/dsigma = 2 sigma.
    vae = VAE(VAEConfig(latent_dim=3, hidden_dims=(8,)))
    mu = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([[1.0, 0.3, 0.7]], dtype=torch.float64, requires_grad=True)
    n = 100_000
    z = vae.reparameterize(mu, 2 * torch.log(sigma), n_samples=n, generator=gen(10))
    z.pow(2).mean(0).sum().backward()
    # Per-sample gradients 2 (mu + sigma eps) and 2 (mu + sigma eps) eps have variances 4 sigma^2
    # and 4 mu^2 + 8 sigma^2; the MC mean over n samples has standard error sqrt(var / n).
    se_mu = 2 * sigma.detach() / math.sqrt(n)
    se_sigma = (4 * mu.detach() ** 2 + 8 * sigma.detach() ** 2).sqrt() / math.sqrt(n)
    assert ((mu.grad - 2 * mu.detach()).abs() < 5 * se_mu).all()
    assert ((sigma.grad - 2 * sigma.detach()).abs() < 5 * se_sigma).all()


def test_reparameterize_is_reproducible_with_a_generator():
    vae = VAE(VAEConfig(latent_dim=2, hidden_dims=(4,)))
    mu, logvar = torch.zeros(3, 2), torch.zeros(3, 2)
    a = vae.reparameterize(mu, logvar, n_samples=2, generator=gen(11))
    b = vae.reparameterize(mu, logvar, n_samples=2, generator=gen(11))
    assert torch.equal(a, b)
    assert torch.equal(vae.sample(3, generator=gen(12)), vae.sample(3, generator=gen(12)))


def test_a_few_adam_steps_lower_the_negative_elbo_on_a_handful_of_images():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(latent_dim=4, hidden_dims=(64,)))
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.3), generator=gen(13))

    def loss():  # the same noise each time, so the comparison is of the parameters alone
        return negative_elbo_loss(vae_elbo(vae, x, n_samples=4, generator=gen(14)))

    with torch.no_grad():
        before = loss().item()
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for _ in range(40):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    with torch.no_grad():
        after = loss().item()
    # Untrained: about 784 log 2 = 543 nats. 40 steps reach well below that (about 160 here, as the
    # latent code starts to memorize the 8 images); a broken gradient path would stay near 543.
    assert after < before - 100, (before, after)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("shape", [(5, 784), (5, 28, 28), (5, 1, 32, 32), (1, 28, 28)])
def test_encode_rejects_wrong_image_shapes_with_the_fix(shape):
    vae = VAE()
    with pytest.raises(ValueError) as error:
        vae.encode(torch.rand(shape))
    message = str(error.value)
    assert str(list(shape)) in message  # names what it got
    assert "[B, 1, 28, 28]" in message  # and what it expects
    if math.prod(shape) % 784 == 0:
        assert "x.view(-1, 1, 28, 28)" in message  # and how to fix it
    else:
        assert "image_shape" in message
    with pytest.raises(ValueError):
        vae(torch.rand(shape))


def test_encode_rejects_integer_images():
    with pytest.raises(TypeError, match=r"x.float\(\) / 255"):
        VAE().encode(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


def test_decode_rejects_wrong_latent_size():
    with pytest.raises(ValueError, match=r"\[\.\.\., 20\]"):
        VAE().decode(torch.zeros(3, 7))


# --------------------------------------------------------------------------- config
def test_config_round_trips_through_dict_and_json():
    for config in CONFIGS.values():
        data = config.to_dict()
        assert VAEConfig.from_dict(data) == config
        assert VAEConfig.from_dict(json.loads(json.dumps(data))) == config
        assert isinstance(VAEConfig.from_dict(data).hidden_dims, tuple)
        assert isinstance(VAEConfig.from_dict(data).image_shape, tuple)


def test_config_defaults_per_architecture():
    assert VAEConfig().hidden_dims == (400,)
    assert VAEConfig(architecture="conv").hidden_dims == (32, 64)
    assert VAEConfig(hidden_dims=[100, 50]).hidden_dims == (100, 50)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"latent_dim": 0}, "latent_dim"),
        ({"latent_dim": 2.5}, "latent_dim"),
        ({"architecture": "transformer"}, "architecture"),
        ({"hidden_dims": 400}, r"hidden_dims=\(400,\)"),
        ({"hidden_dims": (400, -1)}, "hidden_dims"),
        ({"architecture": "conv", "hidden_dims": ()}, "at least one"),
        ({"image_shape": (28, 28)}, r"image_shape=\(1, 28, 28\)"),
        ({"likelihood": "poisson"}, "likelihood"),
        ({"decoder_std": 0.1}, "only to likelihood='gaussian'"),
        ({"likelihood": "gaussian", "decoder_std": -1.0}, "decoder_std"),
        ({"architecture": "conv", "hidden_dims": (8, 16, 32)}, r"divisible by 8.*hidden_dims=\(8, 16\)"),
        ({"architecture": "conv", "image_shape": (1, 27, 27)}, "architecture='mlp'"),
    ],
)
def test_config_validation_names_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VAEConfig(**kwargs)


def test_from_dict_rejects_unknown_fields_and_vae_rejects_a_dict():
    with pytest.raises(ValueError, match="unknown VAEConfig field"):
        VAEConfig.from_dict({"latent_dim": 2, "latnet_dim": 3})
    with pytest.raises(TypeError, match="from_dict"):
        VAE({"latent_dim": 2})


# --------------------------------------------------------------------------- device and seeding
def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")
    assert pick_device().type in {"cuda", "mps", "cpu"}
    if torch.cuda.is_available():
        assert pick_device().type == "cuda"
    else:
        with pytest.raises(RuntimeError, match="CUDA is not available.*device='cpu'"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("gpu")


def test_seed_everything_makes_runs_repeatable():
    generator = seed_everything(123)
    first = (torch.randn(3), torch.randn(2, generator=generator))
    generator = seed_everything(123)
    second = (torch.randn(3), torch.randn(2, generator=generator))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert generator.device == torch.device("cpu")


# --------------------------------------------------------------------------- property-based (Hypothesis)
BOUNDED = settings(max_examples=50, deadline=None)
SEEDS = st.none() | st.integers(-(2**63), 2**64 - 1)


@st.composite
def valid_configs(draw):
    architecture = draw(st.sampled_from(["mlp", "conv"]))
    if architecture == "mlp":
        hidden = draw(st.lists(st.integers(1, 512), max_size=3))
        shape = (draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    else:
        hidden = draw(st.lists(st.integers(1, 64), min_size=1, max_size=3))
        step = 2 ** len(hidden)
        shape = (draw(st.integers(1, 3)), step * draw(st.integers(1, 8)), step * draw(st.integers(1, 8)))
    likelihood = draw(st.sampled_from(["bernoulli", "gaussian"]))
    std = draw(st.none() | st.floats(1e-4, 1e3)) if likelihood == "gaussian" else None
    as_list = draw(st.booleans())  # JSON gives lists; they must become tuples
    return VAEConfig(
        latent_dim=draw(st.integers(1, 256)),
        architecture=architecture,
        hidden_dims=list(hidden) if as_list else tuple(hidden),
        image_shape=list(shape) if as_list else shape,
        likelihood=likelihood,
        decoder_std=std,
        seed=draw(SEEDS),
    )


@BOUNDED
@given(valid_configs())
def test_valid_configs_round_trip_through_dict_and_json(config):
    assert isinstance(config.hidden_dims, tuple) and isinstance(config.image_shape, tuple)
    assert VAEConfig.from_dict(config.to_dict()) == config
    assert VAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


NOT_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
NOT_INTS = st.booleans() | st.floats(allow_nan=True) | st.text(max_size=3) | st.none() | NOT_FINITE
BAD_VALUES = {
    "latent_dim": NOT_INTS.filter(lambda v: v is not None) | st.integers(max_value=0),
    "architecture": st.text(max_size=6).filter(lambda v: v not in ("mlp", "conv")) | st.none() | st.integers(),
    "hidden_dims": st.lists(st.booleans() | st.integers(max_value=0) | st.floats(allow_nan=True), min_size=1, max_size=3)
    | st.integers(1, 5) | st.text(min_size=1, max_size=3),
    "image_shape": st.tuples(st.integers(1, 3), st.integers(1, 9), st.booleans() | st.integers(max_value=0) | NOT_FINITE)
    | st.tuples(st.integers(1, 9), st.integers(1, 9)) | st.none(),
    "likelihood": st.text(max_size=6).filter(lambda v: v not in ("bernoulli", "gaussian")) | st.none(),
    "decoder_std": st.booleans() | NOT_FINITE | st.floats(max_value=0) | st.text(min_size=1, max_size=3),
    "seed": st.booleans() | st.floats(allow_nan=True) | st.text(max_size=3) | st.integers(min_value=2**64)
    | st.integers(max_value=-(2**63) - 1),
}


@BOUNDED
@given(st.sampled_from(sorted(BAD_VALUES)).flatmap(lambda name: st.tuples(st.just(name), BAD_VALUES[name])))
def test_invalid_config_values_are_refused_naming_the_field(field_and_value):
    name, value = field_and_value
    kwargs = {name: value}
    if name == "decoder_std":
        kwargs["likelihood"] = "gaussian"
    with pytest.raises((ValueError, TypeError)) as info:
        VAEConfig(**kwargs)
    assert name in str(info.value), (kwargs, str(info.value))


@st.composite
def image_batches(draw, bad: bool):
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    seed = draw(st.integers(0, 2**31))
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    if draw(st.booleans()):  # the ends of the interval are allowed
        x.view(-1)[0] = draw(st.sampled_from([0.0, 1.0]))
    if bad:
        value = draw(st.floats(allow_nan=True, allow_infinity=True, width=32).filter(lambda v: not 0 <= v <= 1))
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = value
    return x


@BOUNDED
@given(image_batches(bad=False))
def test_images_in_the_unit_interval_pass_the_check(x):
    check_images(x, tuple(x.shape[1:]))


@BOUNDED
@given(image_batches(bad=True))
def test_any_value_outside_the_unit_interval_is_refused(x):
    with pytest.raises(ValueError, match=r"values in \[0, 1\]") as info:
        check_images(x, tuple(x.shape[1:]))
    low, high = torch.aminmax(x)
    if torch.isnan(x).any():
        assert "NaN" in str(info.value)
    elif math.isinf(low) or math.isinf(high):
        assert "infinite" in str(info.value)
    elif low < 0:
        assert "negative" in str(info.value)
    elif 1.5 < high <= 255:
        assert "divide by 255" in str(info.value)


@BOUNDED
@given(image_batches(bad=False), st.sampled_from([torch.uint8, torch.int64, torch.bool, torch.float64, torch.float16]))
def test_other_dtypes_are_refused_with_the_conversion(x, dtype):
    with pytest.raises(TypeError, match=r"x\.float\(\)"):
        check_images(x.to(dtype), tuple(x.shape[1:]))


def test_seed_everything_refuses_seeds_torch_cannot_take():
    with pytest.raises(TypeError, match="int"):
        seed_everything(True)
    with pytest.raises(ValueError, match=r"\[-2\*\*63, 2\*\*64\)"):
        seed_everything(2**64)
