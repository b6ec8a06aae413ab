"""vae_utils.runs: when load_or_train reuses a run, and overwrite=False."""

from __future__ import annotations

import pytest
import torch

import vae_utils as vu
import vae_utils.runs as runs
from vae_utils.data import ImageDataset

CONFIG = vu.VAEConfig(latent_dim=3, hidden_dims=(16,))
TRAIN = vu.TrainConfig(epochs=1, batch_size=16, device="cpu")


def tiny_data(n: int = 48, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    return ImageDataset(images, torch.zeros(n, dtype=torch.long), ["a"], "tiny/train")


@pytest.fixture
def fits(monkeypatch):
    calls = []
    real = runs.fit

    def counting(*args, **kwargs):
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(runs, "fit", counting)
    return calls


def test_same_run_compares_configs_without_the_device_and_the_data(tmp_path, fits):
    path = tmp_path / "run.pt"
    vu.load_or_train(path, CONFIG, TRAIN, tiny_data(), progress=False)
    checkpoint = vu.load_checkpoint(path, device="cpu")
    assert runs.same_run(checkpoint, CONFIG, TRAIN, tiny_data())
    assert runs.same_run(checkpoint, CONFIG, vu.TrainConfig(epochs=1, batch_size=16, device=None), tiny_data())
    assert runs.same_run(checkpoint, CONFIG, vu.TrainConfig(epochs=1, batch_size=16, cuda_graph=False), tiny_data())
    assert runs.same_run(checkpoint, CONFIG, vu.TrainConfig(epochs=1, batch_size=16, compile=True), tiny_data())
    assert not runs.same_run(checkpoint, vu.VAEConfig(latent_dim=3, hidden_dims=(16,), seed=1), TRAIN, tiny_data())
    assert not runs.same_run(checkpoint, CONFIG, vu.TrainConfig(epochs=1, batch_size=16, objective="iw", k=2),
                             tiny_data())
    assert not runs.same_run(checkpoint, CONFIG, TRAIN, tiny_data(40))
    assert runs.find_run(tmp_path / "missing.pt", CONFIG, TRAIN, tiny_data()) is None
    assert len(fits) == 1


def test_overwrite_false_refuses_to_replace_another_run_before_training(tmp_path, fits):
    path = tmp_path / "run.pt"
    vu.load_or_train(path, CONFIG, TRAIN, tiny_data(), progress=False)
    before = path.read_bytes()
    assert vu.load_or_train(path, CONFIG, TRAIN, tiny_data(), progress=False, overwrite=False).history.epoch == [1]
    with pytest.raises(FileExistsError, match="holds another run.*overwrite=True"):
        vu.load_or_train(path, CONFIG, vu.TrainConfig(epochs=2, batch_size=16), tiny_data(), progress=False,
                         overwrite=False)
    assert len(fits) == 1 and path.read_bytes() == before
    with pytest.raises(IsADirectoryError, match="is a folder"):
        vu.load_or_train(tmp_path, CONFIG, TRAIN, tiny_data(), progress=False)
    with pytest.raises(TypeError, match="needs a model config .* and a TrainConfig"):
        vu.load_or_train(path, CONFIG.to_dict(), TRAIN, tiny_data(), progress=False)


def test_metadata_is_stored_with_the_new_checkpoint(tmp_path):
    path = tmp_path / "run.pt"
    vu.load_or_train(path, CONFIG, TRAIN, tiny_data(), progress=False, metadata={"dataset": "tiny"})
    metadata = vu.load_checkpoint(path).metadata
    assert metadata["dataset"] == "tiny" and metadata["train_data"] == {"name": "tiny/train", "n": 48}
