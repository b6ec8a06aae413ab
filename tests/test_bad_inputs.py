"""Bad input through the public entry points: each gets the right exception and a message that names
the problem (and, where there is one, the fix). Plus: the checks stay off the training step, and the
correct behaviours (uint8 in the widgets, a boolean mask in subset) really are correct.

Each row of BAD_INPUTS is (id, call, exception type, substring of the message). The calls build their
own small inputs, so one row cannot affect another.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vae_utils.data import ImageDataset, load_dataset, read_idx
from vae_utils.model import VAE, VAEConfig
from vae_utils.objectives import elbo_objective, vae_elbo
from vae_utils.validation import check_images
from vae_utils.widgets import interpolate_codes, interpolation_explorer, latent_explorer

CONFIG = VAEConfig(latent_dim=3, hidden_dims=(16,))
MODEL = VAE(CONFIG).eval()


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def dataset(n=12):
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return ImageDataset(images, torch.arange(n) % 10, [str(i) for i in range(10)], "tiny")


def with_value(value, index=(0, 0, 3, 4)):
    x = rand(4, 1, 28, 28)
    x[index] = value
    return x


def drain(iterator):
    return list(iterator)


BAD_INPUTS = [
    # ---- images into the model: VAE.encode, forward, reconstruct, vae_elbo (through the model)
    ("encode 0..255 floats", lambda: MODEL.encode(rand(4, 1, 28, 28) * 255), ValueError, "divide by 255"),
    ("forward 0..255 floats", lambda: MODEL(rand(4, 1, 28, 28) * 255), ValueError, "divide by 255"),
    ("vae_elbo 0..255 floats", lambda: vae_elbo(MODEL, rand(4, 1, 28, 28) * 255), ValueError, "divide by 255"),
    ("reconstruct 0..255 floats", lambda: MODEL.reconstruct(with_value(200.0)), ValueError, "divide by 255"),
    ("encode slightly above 1", lambda: MODEL.encode(with_value(1.2)), ValueError, "x.clamp(0, 1)"),
    ("encode values up to 1000", lambda: MODEL.encode(with_value(1000.0)), ValueError, "rescale them into [0, 1]"),
    ("encode negative", lambda: MODEL.encode(rand(4, 1, 28, 28) - 0.5), ValueError, "negative values"),
    ("encode normalized", lambda: MODEL.encode((rand(4, 1, 28, 28) - 0.5) / 0.3), ValueError, "transforms.Normalize"),
    ("encode NaN", lambda: MODEL.encode(with_value(math.nan)), ValueError, "1 value(s) are NaN"),
    ("vae_elbo NaN", lambda: vae_elbo(MODEL, with_value(math.nan)), ValueError, "NaN"),
    ("encode +inf", lambda: MODEL.encode(with_value(math.inf)), ValueError, "infinite"),
    ("encode -inf", lambda: MODEL.encode(with_value(-math.inf)), ValueError, "infinite"),
    ("encode empty batch", lambda: MODEL.encode(torch.zeros(0, 1, 28, 28)), ValueError, "empty batch"),
    ("vae_elbo empty batch", lambda: vae_elbo(MODEL, torch.zeros(0, 1, 28, 28)), ValueError, "empty batch"),
    ("encode float64", lambda: MODEL.encode(rand(4, 1, 28, 28).double()), TypeError, "torch.float64 images but the model is float32: convert them with x.float()"),
    ("float64 model", lambda: VAE(CONFIG).double().encode(rand(4, 1, 28, 28)), TypeError, "model.float()"),
    ("encode uint8", lambda: MODEL.encode(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)), TypeError, "x.float() / 255"),
    ("encode bool", lambda: MODEL.encode(torch.zeros(2, 1, 28, 28, dtype=torch.bool)), TypeError, "x.float()"),
    ("encode numpy", lambda: MODEL.encode(np.zeros((2, 1, 28, 28), np.float32)), TypeError, "torch.as_tensor(x)"),
    ("encode list", lambda: MODEL.encode([[0.0] * 784]), TypeError, "torch.as_tensor(x)"),
    ("encode None", lambda: MODEL.encode(None), TypeError, "NoneType"),
    ("encode colour batch", lambda: MODEL.encode(rand(4, 3, 28, 28)), ValueError, "VAEConfig(image_shape=(3, 28, 28))"),
    ("encode channels last", lambda: MODEL.encode(rand(4, 28, 28, 1)), ValueError, "x.permute(0, 3, 1, 2)"),
    ("decode numpy", lambda: MODEL.decode(np.zeros((2, 3), np.float32)), TypeError, "numpy array (dtype float32, shape [2, 3]): convert it with torch.as_tensor(x)"),
    ("decode list", lambda: MODEL.decode([0.0, 0.0, 0.0]), TypeError, "torch.as_tensor(x)"),
    ("decode float64", lambda: MODEL.decode(torch.zeros(2, 3, dtype=torch.float64)), TypeError, "x.float()"),
    ("decode ints", lambda: MODEL.decode(torch.zeros(2, 3, dtype=torch.long)), TypeError, "x.float()"),
    ("sample 2.5", lambda: MODEL.sample(2.5), ValueError, "positive int"),
    ("sample True", lambda: MODEL.sample(True), ValueError, "positive int"),
    # ---- VAEConfig
    ("config latent_dim=True", lambda: VAEConfig(latent_dim=True), ValueError, "latent_dim"),
    ("config decoder_std=True", lambda: VAEConfig(likelihood="gaussian", decoder_std=True), ValueError, "decoder_std"),
    ("config decoder_std=inf", lambda: VAEConfig(likelihood="gaussian", decoder_std=math.inf), ValueError, "decoder_std"),
    ("config decoder_std=nan", lambda: VAEConfig(likelihood="gaussian", decoder_std=math.nan), ValueError, "decoder_std"),
    ("config hidden_dims=(True,)", lambda: VAEConfig(hidden_dims=(True,)), ValueError, "hidden_dims"),
    ("config image_shape bool", lambda: VAEConfig(image_shape=(True, 28, 28)), ValueError, "image_shape"),
    ("config seed=True", lambda: VAEConfig(seed=True), ValueError, "seed"),
    ("config seed=2**64", lambda: VAEConfig(seed=2**64), ValueError, "seed"),
    ("config architecture list", lambda: VAEConfig(architecture=["mlp"]), ValueError, "architecture"),
    # ---- data
    ("load_dataset(None)", lambda: load_dataset(None), TypeError, "name must be a str"),
    ("load_dataset unknown", lambda: load_dataset("cifar10"), ValueError, "Valid names: 'fashion-mnist', 'mnist'"),
    ("load_dataset split None", lambda: load_dataset("mnist", None), TypeError, "split must be"),
    ("load_dataset download='no'", lambda: load_dataset("mnist", download="no"), TypeError, "download must be"),
    ("load_dataset root=3", lambda: load_dataset("mnist", root=3), TypeError, "root must be"),
    ("subset(2.5)", lambda: dataset().subset(2.5), TypeError, "subset(2)"),
    ("subset(True)", lambda: dataset().subset(True), TypeError, "int count"),
    ("subset float indices", lambda: dataset().subset(torch.tensor([0.0, 1.0])), TypeError, "integer indices"),
    ("subset index out of range", lambda: dataset().subset([0, 99]), IndexError, "-12..11"),
    ("subset short mask", lambda: dataset().subset(torch.ones(3, dtype=torch.bool)), ValueError, "shape [12]"),
    ("batches(2.5)", lambda: dataset().batches(2.5), ValueError, "positive int"),
    ("batches(0)", lambda: dataset().batches(0), ValueError, "positive int"),
    ("batches(True)", lambda: dataset().batches(True), ValueError, "positive int"),
    ("batches(drop_last=0)", lambda: dataset().batches(4, drop_last=0), TypeError, "drop_last must be True or False"),
    ("batches(binarize='no')", lambda: dataset().batches(4, binarize="no"), TypeError, "binarize must be True or False"),
    ("to('gpu')", lambda: dataset().to("gpu"), ValueError, "unknown device 'gpu'"),
    ("to('cuda') without CUDA", lambda: dataset().to("cuda") if not torch.cuda.is_available() else pytest.skip("CUDA is here"), RuntimeError, "CUDA is not available"),
    ("binarized(seed=0.5)", lambda: dataset().binarized(0.5), TypeError, "seed must be an int"),
    ("batches(generator=0)", lambda: dataset().batches(4, generator=0), TypeError, "manual_seed"),
    ("ImageDataset numpy", lambda: ImageDataset(np.zeros((2, 1, 28, 28), np.uint8), torch.zeros(2, dtype=torch.long), [], "x"), TypeError, "torch.as_tensor"),
    ("ImageDataset 0..255 floats", lambda: ImageDataset(rand(2, 1, 28, 28) * 255, torch.zeros(2, dtype=torch.long), [], "x"), ValueError, "look like 0..255"),
    ("ImageDataset float labels", lambda: ImageDataset(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.zeros(2), [], "x"), TypeError, "labels.long()"),
    # ---- widgets
    ("explorer not a VAE", lambda: latent_explorer(torch.nn.Linear(2, 2)), TypeError, "needs a trained vae_utils VAE"),
    ("explorer a dataset", lambda: latent_explorer(dataset()), TypeError, "got ImageDataset"),
    ("interpolation not a VAE", lambda: interpolation_explorer("model", rand(1, 28, 28), rand(1, 28, 28)), TypeError, "got str"),
    ("explorer span=-1", lambda: latent_explorer(MODEL, span=-1), ValueError, "span must be a positive finite number"),
    ("explorer span=0", lambda: latent_explorer(MODEL, span=0), ValueError, "span"),
    ("explorer span=nan", lambda: latent_explorer(MODEL, span=math.nan), ValueError, "span"),
    ("explorer span=True", lambda: latent_explorer(MODEL, span=True), ValueError, "span"),
    ("explorer NaN pixel", lambda: latent_explorer(MODEL, with_value(math.nan)[0]), ValueError, "NaN"),
    ("explorer 0..255 floats", lambda: latent_explorer(MODEL, rand(1, 28, 28) * 255), ValueError, "divide by 255"),
    ("explorer int64 pixels", lambda: latent_explorer(MODEL, torch.zeros(1, 28, 28, dtype=torch.long)), TypeError, "x.float() / 255"),
    ("explorer colour image", lambda: latent_explorer(MODEL, rand(3, 28, 28)), ValueError, "expected one image of shape [1, 28, 28]"),
    ("interpolation unknown method", lambda: interpolation_explorer(MODEL, rand(1, 28, 28), rand(1, 28, 28), method="cubic"), ValueError, "'linear', 'spherical'"),
    ("interpolation NaN pixel", lambda: interpolation_explorer(MODEL, rand(1, 28, 28), with_value(math.nan)[0]), ValueError, "NaN"),
    ("interpolate_codes unknown method", lambda: interpolate_codes(torch.zeros(3), torch.ones(3), 0.5, "slerp"), ValueError, "'linear', 'spherical'"),
    ("interpolate_codes shapes", lambda: interpolate_codes(torch.zeros(3), torch.ones(4), 0.5), ValueError, "same shape"),
]


@pytest.mark.parametrize("name, call, error, words", BAD_INPUTS, ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_gets_a_clear_error(name, call, error, words):
    with pytest.raises(error) as info:
        result = call()
        if hasattr(result, "__next__"):  # a generator would only fail when iterated: it must not get here
            drain(result)
    assert words in str(info.value), str(info.value)


def test_read_idx_on_a_folder_names_the_folder_and_its_files(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(IsADirectoryError) as info:
        read_idx(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "train-images-idx3-ubyte" in message and "load_dataset(root=" in message


def test_the_colour_message_never_advises_view():
    with pytest.raises(ValueError) as info:
        MODEL.encode(rand(4, 3, 28, 28))
    message = str(info.value)
    assert "image_shape=(1, 28, 28)" in message and "x.mean(dim=1, keepdim=True)" in message
    assert "view" not in message  # x.view(-1, 1, 28, 28) would split each colour image into three grey ones


# ------------------------------------------------------------------------- correct behaviour
def test_the_checks_let_good_images_through_unchanged():
    x = rand(4, 1, 28, 28)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0.0, 1.0  # the ends of [0, 1] are fine
    mu, logvar = MODEL.encode(x)
    assert mu.shape == (4, 3) and bool(torch.isfinite(mu).all())
    check_images(x, (1, 28, 28))  # returns None, raises nothing
    check_images(rand(1, 3, 8, 8), (3, 8, 8))


def count_value_checks(monkeypatch) -> list:
    """The shapes of the tensors whose values get checked: the check is one torch.aminmax over the images."""
    calls, real = [], torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda x, **kw: calls.append(tuple(x.shape)) or real(x, **kw))
    return calls


def test_values_are_checked_where_images_come_in_never_in_the_training_math(monkeypatch):
    """encode and vae_elbo check the values of the images they are given (one reduction each); the
    objectives the loops call on ImageDataset batches (in [0, 1] by construction) check nothing."""
    calls = count_value_checks(monkeypatch)
    data = dataset(20)
    for binarize in (False, True):
        for x in data.batches(8, binarize=binarize):
            elbo_objective()(MODEL, x)
    assert calls == []
    MODEL.encode(data.float_images())
    vae_elbo(MODEL, next(iter(data.batches(8))))
    assert calls == [(20, 1, 28, 28), (8, 1, 28, 28)]


def test_fit_and_the_evaluators_do_not_check_values_per_batch(monkeypatch):
    from vae_utils.evaluation import estimate_log_likelihood, evaluate_elbo
    from vae_utils.train_config import TrainConfig
    from vae_utils.training import fit

    calls = count_value_checks(monkeypatch)
    fit(VAE(CONFIG), dataset(32), dataset(8), TrainConfig(epochs=2, batch_size=8, device="cpu"), progress=False)
    evaluate_elbo(MODEL, dataset(32), batch_size=8)
    estimate_log_likelihood(MODEL, dataset(32), k=4, batch_size=8, progress=False)
    assert calls == []
    evaluate_elbo(MODEL, dataset(32).float_images(), batch_size=8)  # a tensor: checked once, whole
    assert calls == [(32, 1, 28, 28)]


def test_widgets_take_uint8_pixels_as_gray_levels():
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    floats = pixels.float() / 255
    from_uint8 = latent_explorer(MODEL, pixels)
    from_float = latent_explorer(MODEL, floats)
    torch.testing.assert_close(from_uint8.start, from_float.start)
    assert max(s.max for s in from_uint8.sliders) == 3.0  # the default span: codes of [0, 1] images, not 255x
    numpy_pixels = latent_explorer(MODEL, pixels.numpy())
    torch.testing.assert_close(numpy_pixels.start, from_float.start)
    interpolation = interpolation_explorer(MODEL, pixels, floats)
    torch.testing.assert_close(interpolation.z_a, interpolation.z_b)


def test_subset_with_a_boolean_mask_picks_the_true_rows():
    data = dataset(12)
    mask = torch.arange(12) % 3 == 0
    picked = data.subset(mask)
    assert torch.equal(picked.labels, data.labels[mask]) and len(picked) == 4
    assert torch.equal(data.subset(np.int64(5)).images, data.images[:5])  # numpy ints count as ints


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: a host sync is only visible on a GPU")
def test_training_steps_on_cuda_never_wait_for_the_device():
    model = VAE(CONFIG).cuda()
    data = dataset(64).to("cuda")
    batches = list(data.batches(16, generator=torch.Generator("cuda").manual_seed(0), binarize=True))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronizing CUDA call raises
    try:
        for x in batches:
            elbo_objective()(model, x).objective.sum().backward()  # the training math: no check, no sync
        with pytest.raises(RuntimeError, match="synchroniz"):  # the control: vae_elbo checks what it is given
            vae_elbo(model, batches[0])
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_mixed_float_dtypes_are_fine_under_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = MODEL(rand(2, 1, 28, 28))  # the encoder's bfloat16 codes go into the float32 decoder
        assert out.z.dtype == torch.bfloat16 and MODEL.decode(out.z).shape == (2, 1, 28, 28)
    with pytest.raises(TypeError, match=r"bfloat16 latents but the model is float32.*x\.float\(\)"):
        MODEL.decode(out.z)  # outside autocast the same call is a mistake
