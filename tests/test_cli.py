"""The command line: train writes a run folder, evaluate prints the numbers, errors are one line."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_utils import data as data_module
from vae_utils.__main__ import main
from vae_utils.checkpoint import load_checkpoint


def write_idx(path: Path, tensor: torch.Tensor) -> None:
    """uint8 tensor -> gzipped idx file (magic 00 00 08 ndim, big-endian dims, bytes)."""
    header = bytes([0, 0, 0x08, tensor.dim()]) + b"".join(int(d).to_bytes(4, "big") for d in tensor.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header + bytes(tensor.flatten().tolist())))


@pytest.fixture
def tiny_data_dir(tmp_path, monkeypatch):
    """A folder with small Fashion-MNIST-named idx files; the default locations point at empty folders."""
    monkeypatch.setattr(data_module, "SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.setattr(data_module, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("VAE_DATA_DIR", raising=False)
    folder = tmp_path / "idx"
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 192), ("t10k", 48)):
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        rows = torch.arange(28).view(1, 28, 1)
        images = ((rows // 3 == labels.view(n, 1, 1)).expand(n, 28, 28) * 230 + 10).to(torch.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def train_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data-dir", str(data_dir), "--out", str(out), "--latent-dim", "2", "--hidden-dims", "32",
            "--batch-size", "64", "--lr", "3e-3", "--device", "cpu", "--no-download", *extra]


def test_train_writes_the_run_folder_and_evaluate_prints_the_numbers(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "runs" / "tiny"
    assert main(train_args(tiny_data_dir, out, "--epochs", "2")) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "test ELBO" in printed

    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "history.json", "reconstructions.png",
                                                      "samples.png"]
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [1, 2] and len(history["test_elbo"]) == 2
    checkpoint = load_checkpoint(out / "checkpoint.pt", device="cpu")
    assert checkpoint.model.config.latent_dim == 2 and checkpoint.model.config.hidden_dims == (32,)
    assert checkpoint.train_config.epochs == 2 and checkpoint.history.to_dict() == history
    assert checkpoint.metadata["dataset"] == "fashion-mnist"

    from matplotlib.image import imread

    samples, reconstructions = imread(out / "samples.png"), imread(out / "reconstructions.png")
    assert samples.shape[:2] == (8 * 30 + 2, 8 * 30 + 2)  # 8 x 8 grid of 28 px images, 2 px padding
    assert reconstructions.shape[:2] == (4 * 30 + 2, 16 * 30 + 2)  # originals / reconstructions rows

    assert main(["evaluate", str(out), "--k", "20"]) == 0
    printed = capsys.readouterr().out
    elbo = float(re.search(r"test ELBO: (-?[\d.]+) nats", printed).group(1))
    log_px = float(re.search(r"K=20\): (-?[\d.]+) nats", printed).group(1))
    assert elbo == pytest.approx(history["test_elbo"][-1], abs=0.01)  # same binarization and seed as fit
    assert elbo < log_px < 0  # the importance-weighted estimate is the tighter bound


def test_quick_mode_defaults_to_one_epoch(tiny_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VAE_TUTORIAL_QUICK", "1")
    out = tmp_path / "quick"
    assert main(train_args(tiny_data_dir, out, "--limit", "100")) == 0
    assert json.loads((out / "history.json").read_text())["epoch"] == [1]
    assert "on 100 fashion-mnist images" in capsys.readouterr().out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_errors_are_one_line_with_status_2(tiny_data_dir, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "no-such-run")]) == 2
    assert "python -m vae_utils train --out" in _one_line_error(capsys)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint.pt").write_text("not a checkpoint")
    assert main(["evaluate", str(bad)]) == 2
    assert "truncated, corrupt or not a torch file" in _one_line_error(capsys)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--data-dir", str(empty), "--out", str(tmp_path / "x"), "--no-download"]) == 2
    message = _one_line_error(capsys)
    assert "apt-get install dataset-fashion-mnist" in message and "VAE_DATA_DIR" in message
    assert not (tmp_path / "x").exists()

    assert main(["train", "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "y"), "--latent-dim", "0"]) == 2
    assert "latent_dim" in _one_line_error(capsys)


def test_python_dash_m_exit_status(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vae_utils", "evaluate", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no checkpoint at") and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- --help without torch
@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"]])
def test_help_answers_without_importing_torch(argv):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "vae_utils", *argv],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: python -m vae_utils" in result.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert imported and not [name for name in imported if name == "torch" or name.startswith("torch.")]


def test_the_cli_knows_every_data_set():
    from vae_utils.__main__ import DATASET_NAMES

    assert DATASET_NAMES == data_module.DATASET_NAMES


# ----------------------------------------------------------------------------- runs: reuse, determinism, no data loss
def test_a_cli_checkpoint_is_reused_by_load_or_train(tiny_data_dir, tmp_path, monkeypatch):
    import vae_utils as vu
    import vae_utils.runs as runs

    out = tmp_path / "run"
    assert main(train_args(tiny_data_dir, out, "--epochs", "1")) == 0

    def no_training(*args, **kwargs):
        raise AssertionError("load_or_train trained again instead of reusing the CLI's checkpoint")

    monkeypatch.setattr(runs, "fit", no_training)
    train = vu.load_dataset("fashion-mnist", "train", root=tiny_data_dir, device="cpu", download=False)
    result = vu.load_or_train(out / "checkpoint.pt", vu.VAEConfig(latent_dim=2, hidden_dims=(32,)),
                              vu.TrainConfig(epochs=1, batch_size=64, lr=3e-3, device="cpu"), train, progress=False)
    assert result.history.epoch == [1]


def test_train_compile_trains_compiled_and_is_recorded(tiny_data_dir, tmp_path, monkeypatch):
    import vae_utils.runs as runs

    configs = []
    real_fit = runs.fit

    def recording_fit(model, train, test, config, **kwargs):
        configs.append(config)
        return real_fit(model, train, test, config, **kwargs)

    monkeypatch.setattr(runs, "fit", recording_fit)
    assert main(train_args(tiny_data_dir, tmp_path / "run", "--epochs", "1", "--compile")) == 0
    assert [c.compile for c in configs] == [True]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt").train_config.compile is True


def test_two_runs_give_the_same_numbers(tiny_data_dir, tmp_path, capsys):
    for name in ("a", "b"):
        assert main(train_args(tiny_data_dir, tmp_path / name, "--epochs", "1")) == 0
    printed = capsys.readouterr().out
    histories = [json.loads((tmp_path / name / "history.json").read_text()) for name in ("a", "b")]
    for history in histories:
        history.pop("seconds")
    assert histories[0] == histories[1]
    lines = [line for line in printed.splitlines() if line.startswith("epoch 1:")]
    assert len(lines) == 2 and lines[0] == lines[1]


def test_an_existing_run_is_reused_and_never_replaced_without_overwrite(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_data_dir, out, "--epochs", "1")) == 0
    good = (out / "checkpoint.pt").read_bytes()
    assert main(train_args(tiny_data_dir, out, "--epochs", "1")) == 0  # the same run: loaded, not retrained
    assert "reused it, nothing trained" in capsys.readouterr().out
    assert (out / "checkpoint.pt").read_bytes() == good
    capsys.readouterr()

    assert main(train_args(tiny_data_dir, out, "--epochs", "2")) == 2
    assert "--overwrite" in _one_line_error(capsys)
    assert (out / "checkpoint.pt").read_bytes() == good

    assert main(train_args(tiny_data_dir, out, "--epochs", "2", "--overwrite")) == 0
    assert load_checkpoint(out / "checkpoint.pt").train_config.epochs == 2


def test_out_naming_a_file_is_refused_before_training(tiny_data_dir, tmp_path, capsys, monkeypatch):
    import vae_utils.runs as runs

    monkeypatch.setattr(runs, "fit", lambda *a, **k: pytest.fail("trained although --out is a file"))
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert main(train_args(tiny_data_dir, target)) == 2
    assert "--out is a file" in _one_line_error(capsys)
    assert main(train_args(tiny_data_dir, target / "run")) == 2
    assert "parent" in _one_line_error(capsys)
    assert target.read_text() == "keep me"


def test_an_interrupted_run_never_replaces_a_completed_one(tiny_data_dir, tmp_path, capsys, monkeypatch):
    import vae_utils.training as training

    out = tmp_path / "run"
    assert main(train_args(tiny_data_dir, out, "--epochs", "1")) == 0
    good = (out / "checkpoint.pt").read_bytes()
    history = (out / "history.json").read_text()

    real = training.train_epoch
    calls = []

    def interrupt_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", interrupt_in_epoch_2)
    assert main(train_args(tiny_data_dir, out, "--epochs", "3", "--overwrite")) == 130
    assert "checkpoint.interrupted.pt" in capsys.readouterr().out
    assert (out / "checkpoint.pt").read_bytes() == good and (out / "history.json").read_text() == history
    interrupted = load_checkpoint(out / "checkpoint.interrupted.pt")
    assert interrupted.history.epoch == [1] and interrupted.metadata["interrupted"] is True


# ----------------------------------------------------------------------------- evaluate: say, show, refuse
def test_evaluate_says_what_it_will_do_and_shows_progress(tiny_data_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(train_args(tiny_data_dir, out, "--epochs", "1")) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--k", "20"]) == 0
    captured = capsys.readouterr()
    first = captured.out.splitlines()[0]
    assert "48 images" in first and "K=20 importance samples per image (960 decoder passes)" in first
    assert "log p(x), K=20" in captured.err  # the tqdm bar

    assert main(["evaluate", str(out), "--k", str(10**9)]) == 2
    message = _one_line_error(capsys)
    assert "48 images x K=1,000,000,000" in message and "--allow-long" in message

    import vae_utils.evaluation as evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "estimate_log_likelihood", interrupted)
    assert main(["evaluate", str(out), "--k", "20"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "interrupted: evaluate stopped before it finished."


def test_cli_reports_an_os_error_while_saving_as_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    import errno

    from vae_utils import __main__ as cli

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device while writing checkpoint.pt (needed about 8 MB)")

    monkeypatch.setattr(cli, "train", full_disk)
    status = cli.main(["train", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2
    assert "No space left on device" in err and "Traceback" not in err
