"""Checkpoints: round trip, every bad-file case, atomic writes, load_or_train."""

from __future__ import annotations

import pytest
import torch

import vae_utils.checkpoint as checkpoint_module
from vae_utils.checkpoint import CheckpointError, load_checkpoint, load_or_train, save_checkpoint
from vae_utils.data import ImageDataset
from vae_utils.model import VAE, VAEConfig
from vae_utils.training import History, TrainConfig, fit

CONFIG = VAEConfig(latent_dim=3, hidden_dims=(16,))


def tiny_data(n: int = 48, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    return ImageDataset(images, torch.zeros(n, dtype=torch.long), ["a"], "tiny")


@pytest.fixture
def trained():
    torch.manual_seed(0)
    config = TrainConfig(epochs=2, batch_size=16, device="cpu")
    result = fit(VAE(CONFIG), tiny_data(), tiny_data(16, 1), config, progress=False)
    return result, config


def test_round_trip(tmp_path, trained):
    result, config = trained
    path = save_checkpoint(tmp_path / "run" / "model.pt", result.model, result.optimizer, result.history, config,
                           metadata={"dataset": "tiny"})
    assert path.exists()
    loaded = load_checkpoint(path, device="cpu")

    assert loaded.model.config == CONFIG
    assert loaded.history == result.history and loaded.train_config == config
    assert loaded.metadata == {"dataset": "tiny"}
    x = tiny_data(5, 2).float_images()
    z = torch.randn(4, CONFIG.latent_dim)
    result.model.eval()
    with torch.no_grad():
        for a, b in zip(result.model.encode(x), loaded.model.encode(x)):
            assert torch.equal(a, b)
        assert torch.equal(result.model.decode(z), loaded.model.decode(z))

    optimizer = torch.optim.Adam(loaded.model.parameters())
    optimizer.load_state_dict(loaded.optimizer_state)
    original = result.optimizer.state_dict()
    assert optimizer.state_dict()["param_groups"] == original["param_groups"]
    for key, state in original["state"].items():
        for name, value in state.items():
            assert torch.equal(optimizer.state_dict()["state"][key][name], value), (key, name)

    # Plain payload: loads with weights_only=True and says what it is.
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "vae_utils.checkpoint" and payload["version"] == 1
    assert payload["model_config"] == CONFIG.to_dict()


def test_model_only_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = VAE(CONFIG)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model), device="cpu")
    assert loaded.history is None and loaded.train_config is None and loaded.optimizer_state is None
    for a, b in zip(model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="VAEConfig"):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2))


def test_missing_file_says_how_to_create_one(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint at .*save_checkpoint.*load_or_train"):
        load_checkpoint(tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_truncated_file(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", VAE(CONFIG))
    data = path.read_bytes()
    for keep in (len(data) // 2, len(data) - 30, 10, 0):
        path.write_bytes(data[:keep])
        with pytest.raises(CheckpointError, match="truncated, corrupt or not a torch file") as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [[1, 2, 3], {"a": torch.zeros(2)}, {"format": "something-else"}, torch.zeros(3)])
def test_torch_file_that_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="not a vae_utils checkpoint"):
        load_checkpoint(path)


def test_text_file_and_pickled_object(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("these are my notes, not a model\n")
    with pytest.raises(CheckpointError, match="Cannot read .*notes.pt"):
        load_checkpoint(text)
    obj = tmp_path / "object.pt"
    torch.save({"format": "vae_utils.checkpoint", "history": History()}, obj)  # a class, not plain values
    with pytest.raises(CheckpointError, match="not written by save_checkpoint|not a torch file"):
        load_checkpoint(obj)


def test_weights_that_do_not_fit_the_config(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", VAE(CONFIG))
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["latent_dim"] = 5  # says 5, weights are for 3
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "encoder.mu_head.weight: stored [3, 16], config needs [5, 16]" in message

    payload["model_config"]["latent_dim"] = 3
    payload["model_state"]["extra.weight"] = torch.zeros(1)
    del payload["model_state"]["decoder.0.bias"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"missing keys: \['decoder.0.bias'\].*unexpected keys: \['extra.weight'\]"):
        load_checkpoint(path)

    payload = torch.load(save_checkpoint(tmp_path / "m2.pt", VAE(CONFIG)), weights_only=True)
    payload["model_config"]["architecture"] = "transformer"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="invalid model_config"):
        load_checkpoint(path)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_leaves_no_temp_files_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    torch.manual_seed(0)
    old_model = VAE(CONFIG)
    path = save_checkpoint(tmp_path / "m.pt", old_model)
    assert _leftovers(tmp_path) == []
    good_bytes = path.read_bytes()

    def failing_save(obj, file):  # writes half a file, then the disk is "full"
        file.write(good_bytes[: len(good_bytes) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, VAE(CONFIG))
    monkeypatch.undo()
    assert _leftovers(tmp_path) == []
    assert path.read_bytes() == good_bytes
    loaded = load_checkpoint(path, device="cpu")
    for a, b in zip(old_model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)


def test_load_or_train_trains_once_then_loads(tmp_path, monkeypatch):
    calls = []
    real_fit = checkpoint_module.fit

    def counting_fit(*args, **kwargs):
        calls.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "fit", counting_fit)
    path = tmp_path / "cache" / "vae.pt"
    config = TrainConfig(epochs=1, batch_size=16, device="cpu")
    first = load_or_train(path, CONFIG, config, tiny_data(), tiny_data(16, 1), progress=False)
    assert len(calls) == 1 and path.exists() and len(first.history) == 1

    second = load_or_train(path, CONFIG, config, tiny_data(), tiny_data(16, 1), progress=False)
    assert len(calls) == 1  # loaded, not trained
    assert second.history == first.history and not second.interrupted
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    assert second.optimizer.state_dict()["state"].keys() == first.optimizer.state_dict()["state"].keys()

    # Only the device differs: still the same run.
    load_or_train(path, CONFIG, TrainConfig(epochs=1, batch_size=16, device=None), tiny_data(), progress=False)
    assert len(calls) == 1
    # Another training config or model config: trains again and replaces the file.
    load_or_train(path, CONFIG, TrainConfig(epochs=2, batch_size=16, device="cpu"), tiny_data(), progress=False)
    assert len(calls) == 2 and load_checkpoint(path).train_config.epochs == 2
    other = VAEConfig(latent_dim=2, hidden_dims=(16,))
    load_or_train(path, other, TrainConfig(epochs=2, batch_size=16, device="cpu"), tiny_data(), progress=False)
    assert len(calls) == 3 and load_checkpoint(path).model.config == other


def test_load_or_train_replaces_a_corrupt_file_and_does_not_save_interrupted_runs(tmp_path, monkeypatch):
    path = tmp_path / "vae.pt"
    path.write_text("garbage")
    config = TrainConfig(epochs=1, batch_size=16, device="cpu")
    with pytest.warns(UserWarning, match="Training again"):
        load_or_train(path, CONFIG, config, tiny_data(), progress=False)
    assert load_checkpoint(path).train_config == config

    other = tmp_path / "interrupted.pt"

    def interrupted_fit(model, *args, **kwargs):
        return checkpoint_module.FitResult(model, History(), torch.optim.Adam(model.parameters()), True)

    monkeypatch.setattr(checkpoint_module, "fit", interrupted_fit)
    assert load_or_train(other, CONFIG, config, tiny_data(), progress=False).interrupted
    assert not other.exists()


def test_load_or_train_retrains_on_other_data_and_passes_the_callback(tmp_path, monkeypatch):
    calls = []
    real_fit = checkpoint_module.fit

    def counting_fit(*args, **kwargs):
        calls.append(kwargs.get("callback"))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "fit", counting_fit)
    path = tmp_path / "vae.pt"
    config = TrainConfig(epochs=1, batch_size=16, device="cpu")
    seen = []
    load_or_train(path, CONFIG, config, tiny_data(), progress=False, callback=seen.append)
    assert calls == [seen.append] and len(seen) == 1  # fit got the callback and called it once per epoch
    assert load_checkpoint(path).metadata["train_data"] == {"name": tiny_data().name, "n": len(tiny_data())}

    load_or_train(path, CONFIG, config, tiny_data(), progress=False)
    assert len(calls) == 1  # same configs, same data: loaded
    load_or_train(path, CONFIG, config, tiny_data().subset(32), progress=False)
    assert len(calls) == 2  # same configs, fewer training images: trained again
