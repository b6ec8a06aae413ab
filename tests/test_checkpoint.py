"""Checkpoints: round trip, every bad-file case, atomic writes, values converted or refused up front,
full disks, unwritable paths, kills during a save; and load_or_train (vae_utils.runs) on top."""

from __future__ import annotations

import datetime
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vae_utils.checkpoint as checkpoint_module
import vae_utils.files as files_module
import vae_utils.runs as runs_module
from vae_utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vae_utils.data import ImageDataset
from vae_utils.model import VAE, VAEConfig
from vae_utils.runs import load_or_train
from vae_utils.train_config import TrainConfig
from vae_utils.training import FitResult, History, fit

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
    with pytest.raises(TypeError, match="save_checkpoint needs a vae_utils model .*got Linear"):
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
    with pytest.raises(CheckpointError, match="invalid VAE config"):
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
    real_fit = runs_module.fit

    def counting_fit(*args, **kwargs):
        calls.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(runs_module, "fit", counting_fit)
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
        return FitResult(model, History(), torch.optim.Adam(model.parameters()), True)

    monkeypatch.setattr(runs_module, "fit", interrupted_fit)
    assert load_or_train(other, CONFIG, config, tiny_data(), progress=False).interrupted
    assert not other.exists()


def test_load_or_train_retrains_on_other_data_and_passes_the_callback(tmp_path, monkeypatch):
    calls = []
    real_fit = runs_module.fit

    def counting_fit(*args, **kwargs):
        calls.append(kwargs.get("callback"))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(runs_module, "fit", counting_fit)
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


# ------------------------------------------------------------------------- values the file can hold
def test_paths_numpy_scalars_and_tuples_are_converted_and_round_trip(tmp_path):
    metadata = {
        "data_dir": tmp_path / "data",
        "lr": np.float64(1e-3),
        "epochs": np.int64(3),
        "flag": np.bool_(True),
        "shape": (1, 28, 28),
        "nested": {"runs": [tmp_path, np.float32(0.5)], 7: "int keys are fine"},
        "device": torch.device("cpu"),
    }
    path = save_checkpoint(tmp_path / "m.pt", VAE(CONFIG), metadata=metadata)
    loaded = load_checkpoint(path, device="cpu").metadata
    assert loaded["data_dir"] == str(tmp_path / "data") and type(loaded["data_dir"]) is str
    assert loaded["lr"] == 1e-3 and type(loaded["lr"]) is float
    assert loaded["epochs"] == 3 and type(loaded["epochs"]) is int
    assert loaded["flag"] is True
    assert loaded["shape"] == (1, 28, 28)
    assert loaded["nested"] == {"runs": [str(tmp_path), 0.5], 7: "int keys are fine"}
    assert loaded["device"] == "cpu"


@pytest.mark.parametrize("value, words", [
    (datetime.datetime(2026, 1, 1), "metadata['when'] is a datetime"),
    ({1, 2}, "sorted(...)"),
    (np.zeros(3), ".tolist()"),
    ({"deeper": [object()]}, "metadata['when']['deeper'][0] is a object"),
])
def test_values_the_file_cannot_hold_are_refused_before_anything_is_written(tmp_path, value, words):
    path = save_checkpoint(tmp_path / "m.pt", VAE(CONFIG), metadata={"ok": 1})
    good_bytes = path.read_bytes()
    with pytest.raises(TypeError) as info:
        save_checkpoint(path, VAE(CONFIG), metadata={"when": value})
    assert words in str(info.value) and "weights_only" in str(info.value)
    assert path.read_bytes() == good_bytes and _leftovers(tmp_path) == []


def test_a_file_that_does_not_load_back_never_replaces_a_good_one(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", VAE(CONFIG))
    good_bytes = path.read_bytes()

    def unreadable_save(obj, file):  # as if the writer produced a broken file without noticing
        file.write(b"PK\x03\x04 not really a zip file")

    monkeypatch.setattr(checkpoint_module.torch, "save", unreadable_save)
    with pytest.raises(CheckpointError, match="does not load back.*previous file, if any, was kept"):
        save_checkpoint(path, VAE(CONFIG))
    monkeypatch.undo()
    assert path.read_bytes() == good_bytes and _leftovers(tmp_path) == []


def test_files_get_the_umask_mode_like_any_new_file(tmp_path):
    old = os.umask(0o022)
    try:
        assert stat.S_IMODE(save_checkpoint(tmp_path / "a.pt", VAE(CONFIG)).stat().st_mode) == 0o644
        os.umask(0o007)
        assert stat.S_IMODE(save_checkpoint(tmp_path / "b.pt", VAE(CONFIG)).stat().st_mode) == 0o660
    finally:
        os.umask(old)


# ------------------------------------------------------------------------- full disks and bad paths
def test_a_full_disk_says_so_and_how_much_space_was_needed(tmp_path, monkeypatch):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    path = save_checkpoint(tmp_path / "m.pt", VAE(CONFIG))
    good_bytes = path.read_bytes()
    real_save = torch.save

    def save_onto_a_full_disk(obj, writer):
        writer.file = open("/dev/full", "wb")  # every write fails with ENOSPC, as on a full disk
        try:
            real_save(obj, writer)  # torch reports it as "enforce fail at inline_container.cc"
        finally:
            writer.file.close()

    monkeypatch.setattr(checkpoint_module.torch, "save", save_onto_a_full_disk)
    big = VAE(VAEConfig(latent_dim=3, hidden_dims=(1000,)))  # 6.3 MB of weights
    with pytest.raises(OSError) as info:
        save_checkpoint(path, big)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert f"No space left on device while writing {path} (needed about 7 MB" in str(info.value)
    assert "inline_container" not in str(info.value)
    assert path.read_bytes() == good_bytes and _leftovers(tmp_path) == []


def test_torchs_inline_container_error_on_a_nearly_full_disk_is_named(tmp_path, monkeypatch):
    def failing_save(obj, writer):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    monkeypatch.setattr(files_module.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**9, 10**9 - 2**14, 2**14))
    with pytest.raises(OSError, match=r"No space left on device while writing .*m\.pt \(needed about \d+ KB; 16 KB free"):
        save_checkpoint(tmp_path / "m.pt", VAE(CONFIG))
    # The same error with plenty of space is not called a full disk.
    monkeypatch.setattr(files_module.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**12, 0, 10**12))
    with pytest.raises(RuntimeError, match="inline_container"):
        save_checkpoint(tmp_path / "m.pt", VAE(CONFIG))
    assert _leftovers(tmp_path) == []


def test_a_path_that_is_a_folder_or_under_a_file_names_the_problem_and_the_fix(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"{tmp_path}: it is a folder.*{tmp_path / 'checkpoint.pt'}"):
        save_checkpoint(tmp_path, VAE(CONFIG))
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")
    for target in (blocker / "m.pt", blocker / "deeper" / "m.pt"):
        with pytest.raises(NotADirectoryError) as info:
            save_checkpoint(target, VAE(CONFIG))
        assert f"{blocker} is a file, not a folder" in str(info.value) and "move the file" in str(info.value)
    assert blocker.read_text() == "a file where a folder should be"


def test_a_read_only_folder_names_the_folder_and_the_fix(tmp_path, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:  # a real read-only folder (root may write anyway)
        folder.chmod(0o555)
        try:
            with pytest.raises(PermissionError, match=f"the folder {folder} is not writable.*chmod u\\+w"):
                save_checkpoint(folder / "m.pt", VAE(CONFIG))
        finally:
            folder.chmod(0o755)
    real_access = os.access
    monkeypatch.setattr(files_module.os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode))
    with pytest.raises(PermissionError, match=f"the folder {folder} is not writable.*chmod u\\+w"):
        save_checkpoint(folder / "m.pt", VAE(CONFIG))
    assert list(folder.iterdir()) == []


def test_an_unreadable_checkpoint_says_permission_denied(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", VAE(CONFIG))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(checkpoint_module.torch, "load", denied)
    with pytest.raises(CheckpointError, match="Cannot read .*m.pt: permission denied"):
        load_checkpoint(path)


# ------------------------------------------------------------------------- optimizers
def test_an_optimizer_of_another_model_is_refused_when_saving_and_loading(tmp_path):
    model, other = VAE(CONFIG), VAE(VAEConfig(latent_dim=2, hidden_dims=(8,)))
    with pytest.raises(ValueError, match="optimizer is not this model's.*0 of them this model's"):
        save_checkpoint(tmp_path / "m.pt", model, torch.optim.Adam(other.parameters()))
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        save_checkpoint(tmp_path / "m.pt", model, optimizer={"lr": 1e-3})

    # A file whose optimizer state belongs to another model (written by other code, or edited).
    optimizer = torch.optim.Adam(other.parameters())
    other(torch.rand(2, 1, 28, 28)).decoded.sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "m.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["optimizer_state"] = optimizer.state_dict()  # same number of tensors (10), other shapes
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"optimizer state .* does not fit its model: parameter 0's 'exp_avg' has shape \[8, 784\], the parameter \[16, 784\]"):
        load_checkpoint(path)
    payload["optimizer_state"]["param_groups"][0]["params"] = payload["optimizer_state"]["param_groups"][0]["params"][:4]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="holds 4 parameter tensors, the model has 10"):
        load_checkpoint(path)


# ------------------------------------------------------------------------- interrupted saves
def test_stale_temp_files_are_removed_by_the_next_save(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    host = files_module.host_tag()
    dead = tmp_path / f".m.pt.saving-{host}-{dead_pid}-0123abcd.tmp"
    alive = tmp_path / f".m.pt.saving-{host}-{os.getppid()}-0123abcd.tmp"  # a save still running elsewhere
    old_alive = tmp_path / f".x.pt.saving-{host}-{os.getppid()}-89abcdef.tmp"
    other_host = tmp_path / f".m.pt.saving-ffffff-{dead_pid}-0123abcd.tmp"  # cannot tell: kept until old
    save_checkpoint(tmp_path / "m.pt", VAE(CONFIG))
    unrelated = tmp_path / ".m.pt.k2j_x9ab.tmp"  # not a name save_checkpoint writes: never touched, even when old
    for file in (dead, alive, old_alive, other_host, unrelated):
        file.write_bytes(b"PK partial")
    hour_ago = time.time() - 2 * files_module.STALE_TEMP_SECONDS
    for file in (old_alive, unrelated):
        os.utime(file, (hour_ago, hour_ago))
    save_checkpoint(tmp_path / "m.pt", VAE(CONFIG))
    assert _leftovers(tmp_path) == sorted(p.name for p in (alive, other_host, unrelated))
    assert load_checkpoint(tmp_path / "m.pt").model.config == CONFIG


KILL_DRIVER = r"""
import json, os, random, signal, sys, time
import torch
from vae_utils.checkpoint import load_checkpoint, save_checkpoint
from vae_utils.model import VAE, VAEConfig

path, kills = sys.argv[1], int(sys.argv[2])
folder = os.path.dirname(path)
model = VAE(VAEConfig(latent_dim=8, hidden_dims=(128,)))
optimizer = torch.optim.Adam(model.parameters())
model(torch.rand(4, 1, 28, 28)).decoded.sum().backward()
optimizer.step()  # Adam moments too: about 2.4 MB per save
save_checkpoint(path, model, optimizer, metadata={"i": -1})
start = time.perf_counter()
save_checkpoint(path, model, optimizer, metadata={"i": -1})
seconds_per_save = time.perf_counter() - start
rng = random.Random(0)
report = {"seconds_per_save": seconds_per_save, "rounds": []}
for round_ in range(kills):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child saves in a loop until it is killed
        os.close(read)
        i = 0
        while True:
            save_checkpoint(path, model, optimizer, metadata={"i": round_ * 1000 + i})
            os.write(write, b".")
            i += 1
    os.close(write)
    os.read(read, 1)  # at least one save completed in this child
    time.sleep(rng.uniform(0, 2 * seconds_per_save))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)  # reaped: the pid no longer runs
    os.close(read)
    temps = sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))
    metadata = load_checkpoint(path, device="cpu").metadata  # must always load
    report["rounds"].append({"temps": temps, "i": metadata["i"]})
print(json.dumps(report))
"""


def test_kill_9_during_saves_always_leaves_a_loadable_file_and_the_next_save_cleans_up(tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    path.parent.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", KILL_DRIVER, str(path), "10"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    rounds = report["rounds"]
    assert len(rounds) == 10
    # Each kill left the last completed save in place (loaded inside the driver, right after the kill).
    assert all(r["i"] // 1000 == n for n, r in enumerate(rounds)), rounds
    # The kills landed mid-save: many leave a partial temp file (about 6 in 10 here; the next round's
    # first save removes it). None at all would mean this test never interrupted a write.
    assert any(r["temps"] for r in rounds), report
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.metadata["i"] == rounds[-1]["i"] and loaded.optimizer_state is not None
    save_checkpoint(path, loaded.model)  # the next save into that folder removes what the kills left
    assert _leftovers(path.parent) == []
