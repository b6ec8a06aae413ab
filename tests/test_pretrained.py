"""The shipped default model (vae_utils/weights/): it loads safely into today's VAE and still scores what
was recorded when it was written, so a change to the model that silently invalidates it fails here."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

import vae_utils as vu
from vae_utils import pretrained

MAX_SHIPPED_MIB = 5


def fashion_mnist_or_skip():
    try:
        return pretrained.settings_of_shipped_model(device="cpu").load_data()
    except vu.DatasetNotFoundError as err:
        pytest.skip(f"Fashion-MNIST is not installed here: {str(err).splitlines()[0]}")


def test_shipped_weights_are_small_and_hold_no_pickled_code():
    assert pretrained.WEIGHTS.is_file(), f"{pretrained.WEIGHTS} is missing; rebuild it with `python -m vae_utils.pretrained`"
    assert pretrained.WEIGHTS.stat().st_size < MAX_SHIPPED_MIB * 2**20
    with zipfile.ZipFile(pretrained.WEIGHTS) as archive:  # torch.save's format: a zip of tensors and one pickle
        assert any(name.endswith("data.pkl") for name in archive.namelist())
    torch.load(pretrained.WEIGHTS, map_location="cpu", weights_only=True)  # raises on anything but plain data


def test_shipped_checkpoint_is_the_full_setting_model_without_optimizer_state():
    checkpoint = vu.load_checkpoint(pretrained.WEIGHTS, device="cpu")
    s = pretrained.settings_of_shipped_model(device="cpu")
    assert checkpoint.model.config.to_dict() == s.model_config().to_dict()
    assert checkpoint.train_config is not None and checkpoint.train_config.epochs == s.epochs
    assert checkpoint.optimizer_state is None
    assert len(checkpoint.history) == s.epochs


def test_record_says_how_to_rebuild_and_what_was_measured():
    values = json.loads(pretrained.RECORD.read_text())
    assert values["command"] == "python -m vae_utils.pretrained"
    assert values["test_images"] == 10_000
    assert -400 < values["test_elbo"] < 0


def test_shipped_weights_still_give_the_recorded_test_elbo():
    _, test = fashion_mnist_or_skip()
    measured = vu.evaluate_elbo(pretrained.load(device="cpu"), test)
    assert measured["n"] == pretrained.record()["test_images"]
    assert measured["elbo"] == pytest.approx(pretrained.record()["test_elbo"], abs=1e-2)


def test_default_model_starts_from_the_shipped_run_only_for_the_full_setting(tmp_path, monkeypatch):
    train, _ = fashion_mnist_or_skip()
    full = pretrained.settings_of_shipped_model(device="cpu", runs=tmp_path / "full")
    vu.tutorial.default_model(full, train, progress=False)
    assert full.checkpoint.read_bytes() == pretrained.WEIGHTS.read_bytes()
    full.checkpoint.write_bytes(b"a run of the reader's own")  # never replaced by the shipped file
    trained = []
    monkeypatch.setattr(vu.runs, "fit", lambda *args, **kwargs: trained.append(args) or pytest.skip("would train"))
    with pytest.raises(pytest.skip.Exception), pytest.warns(UserWarning, match="Training again"):
        vu.tutorial.default_model(full, train, progress=False)  # unreadable: trained again, not copied over
    assert trained and full.checkpoint.read_bytes() == b"a run of the reader's own"
    trained.clear()
    quick = vu.tutorial.settings(quick=True, device="cpu", runs=tmp_path / "quick")
    with pytest.raises(pytest.skip.Exception):
        vu.tutorial.default_model(quick, train.subset(quick.train_images), progress=False)
    assert trained and not quick.checkpoint.exists()  # another run: trained, nothing copied


def test_default_model_loads_the_shipped_run_instead_of_training(tmp_path):
    train, test = fashion_mnist_or_skip()
    s = pretrained.settings_of_shipped_model(device="cpu", runs=tmp_path)
    result = vu.tutorial.default_model(s, train, test, progress=False)
    assert len(result.history) == s.epochs  # loaded: training here would take minutes
    for name, tensor in pretrained.load(device="cpu").state_dict().items():
        torch.testing.assert_close(result.model.state_dict()[name], tensor)
