"""Command line: train a VAE and evaluate it.

    python -m vae_utils train --dataset fashion-mnist --epochs 10 --out runs/NAME
    python -m vae_utils evaluate runs/NAME [--k 5000]

``train`` goes through ``vae_utils.runs.load_or_train``: a run folder whose ``checkpoint.pt`` was
trained with the same settings on the same data is reused, not retrained (and a notebook's
``load_or_train`` reuses a checkpoint written here). It writes ``checkpoint.pt``, ``samples.png``,
``reconstructions.png`` and ``history.json`` into the run folder; it never replaces another run's
checkpoint without ``--overwrite``, and an interrupted run is saved as ``checkpoint.interrupted.pt``
(with ``history.interrupted.json``) beside, never over, a completed one. ``evaluate`` prints the
test ELBO and the importance-weighted log-likelihood estimate. With ``VAE_TUTORIAL_QUICK=1`` the
defaults shrink (1 epoch, K=100); explicit options still win. Errors a user can fix print one line
and exit with status 2; Ctrl-C exits with status 130. ``--help`` does not import torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

CHECKPOINT_NAME = "checkpoint.pt"
INTERRUPTED_NAME = "checkpoint.interrupted.pt"
DATASET_NAMES = ("fashion-mnist", "mnist")  # = vae_utils.data.DATASET_NAMES (a test keeps them equal)


class CLIError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def _quick() -> bool:
    return os.environ.get("VAE_TUTORIAL_QUICK") == "1"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vae_utils", description="Train and evaluate variational autoencoders."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate}")

    train = commands.add_parser("train", help="train a VAE and write a run folder")
    train.add_argument("--dataset", default="fashion-mnist", choices=DATASET_NAMES)
    train.add_argument("--epochs", type=int, default=None, help="default 10 (1 with VAE_TUTORIAL_QUICK=1)")
    train.add_argument("--out", required=True, type=Path, help="run folder, e.g. runs/NAME")
    train.add_argument("--overwrite", action="store_true",
                       help="replace a checkpoint in --out that was trained with other settings or data")
    train.add_argument("--latent-dim", type=int, default=20)
    train.add_argument("--architecture", default="mlp", choices=("mlp", "conv"))
    train.add_argument("--hidden-dims", type=int, nargs="+", default=None,
                       help="MLP widths or conv channels (default 400 for mlp, 32 64 for conv)")
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--objective", default="elbo", choices=("elbo", "iw"),
                       help="elbo (a VAE) or iw (an IWAE: the importance-weighted bound with --k samples)")
    train.add_argument("--k", type=int, default=1, help="importance samples with --objective iw")
    train.add_argument("--beta", type=float, default=1.0)
    train.add_argument("--kl-warmup-epochs", type=float, default=0)
    train.add_argument("--no-binarize", action="store_true", help="train on gray levels (no dynamic binarization)")
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: best available)")
    train.add_argument("--compile", action="store_true",
                       help="compile the objective with torch.compile (needs a C++ compiler on a CPU; the first "
                            "compile takes tens of seconds, later processes reuse torch's cache)")
    train.add_argument("--seed", type=int, default=0, help="seeds the initial weights, batch order and binarization")
    _add_data_options(train)

    evaluate = commands.add_parser("evaluate", help="print the test ELBO and log-likelihood of a run")
    evaluate.add_argument("run", type=Path, help="run folder written by train (or its checkpoint.pt)")
    evaluate.add_argument("--k", type=int, default=None, help="importance samples (default 5000; 100 quick)")
    evaluate.add_argument("--batch-size", type=int, default=None)
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--allow-long", action="store_true", help="run even when the estimate is very long")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_data_options(evaluate)
    return parser


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with the idx files (searched first)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    parser.add_argument("--no-download", action="store_true", help="never download the data set")


def _load(name: str, split: str, args, device):
    from .data import load_dataset

    data = load_dataset(name, split, root=args.data_dir, device=device, download=False if args.no_download else None)
    if args.limit is not None:
        if args.limit < 1:
            raise CLIError(f"--limit must be a positive number of images, got {args.limit}.")
        data = data.subset(min(args.limit, len(data)))
    return data


def _device(name: str | None):
    from .device import pick_device

    try:
        return pick_device(name)
    except (ValueError, RuntimeError, TypeError) as err:
        raise CLIError(str(err)) from None


def _save_grid(path: Path, images, nrow: int) -> None:
    """images: [N, C, H, W] in [0, 1] -> a PNG grid (matplotlib's imsave: no figure, no backend)."""
    from matplotlib.image import imsave

    from .plotting import image_grid

    grid = image_grid(images, nrow=nrow, padding=2, pad_value=1.0)
    imsave(path, grid, cmap="gray", vmin=0.0, vmax=1.0)


def _check_out(out: Path) -> None:
    """Refuse, before any training, an --out that is a file or lies under one."""
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            where = "--out" if folder == out else f"--out's parent {folder}"
            raise CLIError(f"{where} is a file, not a folder: {folder}. Give a folder for the run, e.g. runs/NAME.")
    if (out / CHECKPOINT_NAME).is_dir():
        raise CLIError(f"{out / CHECKPOINT_NAME} is a folder; remove it or choose another --out.")


def _configs(args):
    from .model import VAEConfig
    from .train_config import TrainConfig

    epochs = args.epochs if args.epochs is not None else (1 if _quick() else 10)
    try:
        model_config = VAEConfig(latent_dim=args.latent_dim, architecture=args.architecture,
                                 hidden_dims=tuple(args.hidden_dims) if args.hidden_dims else None, seed=args.seed)
        train_config = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, beta=args.beta,
                                   kl_warmup_epochs=args.kl_warmup_epochs, seed=args.seed,
                                   binarize=not args.no_binarize, device=args.device,
                                   objective=args.objective, k=args.k, compile=args.compile)
    except ValueError as err:
        raise CLIError(str(err)) from None
    return model_config, train_config


def train(args) -> int:
    import torch

    from .runs import load_or_train

    out: Path = args.out
    _check_out(out)
    device = _device(args.device)
    model_config, train_config = _configs(args)
    train_data = _load(args.dataset, "train", args, device)
    test_data = _load(args.dataset, "test", args, device)
    metadata = {"dataset": args.dataset, "data_dir": str(args.data_dir) if args.data_dir else None, "limit": args.limit}
    print(f"{args.architecture} VAE (latent {args.latent_dim}) on {len(train_data):,} {args.dataset} images, "
          f"{train_config.epochs} epoch(s), objective {args.objective}, on {device}", flush=True)
    path = out / CHECKPOINT_NAME
    before = path.stat().st_mtime_ns if path.exists() else None
    try:
        result = load_or_train(path, model_config, train_config, train_data, test_data,
                               metadata=metadata, overwrite=args.overwrite)
    except FileExistsError:
        raise CLIError(f"{path} holds a run with other settings or data; nothing was trained. "
                       "Choose another --out, or pass --overwrite to replace it.") from None
    model, history = result.model, result.history
    if result.interrupted:
        return _save_interrupted(out, result, train_config, metadata, train_data)

    if before is not None and path.stat().st_mtime_ns == before:
        print(f"{path} was trained with these settings on these images: reused it, nothing trained", flush=True)
    (out / "history.json").write_text(json.dumps(history.to_dict(), indent=2) + "\n")
    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    _save_grid(out / "samples.png", model.sample(64, generator=generator), nrow=8)
    x = test_data.subset(min(32, len(test_data))).float_images().to(model.device)
    reconstructions = model.reconstruct(x)
    rows = [t for pair in zip(x.split(16), reconstructions.split(16)) for t in pair]  # originals above reconstructions
    _save_grid(out / "reconstructions.png", torch.cat(rows), nrow=16)
    _print_last(history)
    print(f"wrote {path}, samples.png, reconstructions.png, history.json")
    return 0


def _save_interrupted(out: Path, result, train_config, metadata, train_data) -> int:
    from .checkpoint import save_checkpoint

    path = save_checkpoint(out / INTERRUPTED_NAME, result.model, result.optimizer, result.history, train_config,
                           {**metadata, "interrupted": True}, train_data=train_data)
    (out / "history.interrupted.json").write_text(json.dumps(result.history.to_dict(), indent=2) + "\n")
    print(f"interrupted after {len(result.history)} complete epoch(s); saved them to {path} "
          f"(a completed run's {CHECKPOINT_NAME} is never replaced by an interrupted one)", flush=True)
    _print_last(result.history)
    return 130


def _print_last(history) -> None:
    last = history.last()
    if last:
        test = f", test ELBO {last['test_elbo']:.2f}" if last["test_elbo"] is not None else ""
        print(f"epoch {last['epoch']}: train ELBO {last['train_elbo']:.2f}{test} nats per image")


def evaluate(args) -> int:
    from .checkpoint import load_checkpoint
    from .evaluation import EVAL_BINARIZE_SEED, estimate_log_likelihood, evaluate_elbo

    run: Path = args.run
    path = run if run.is_file() else run / CHECKPOINT_NAME
    if not path.exists():
        raise CLIError(
            f"no checkpoint at {path}: {'the run folder ' + str(run) + ' does not exist' if not run.exists() else 'the folder has no ' + CHECKPOINT_NAME}; "
            f"train one with: python -m vae_utils train --out {run}"
        )
    k = args.k if args.k is not None else (100 if _quick() else 5000)
    if k < 1:
        raise CLIError(f"--k must be at least 1, got {k}.")
    device = _device(args.device)
    checkpoint = load_checkpoint(path, device=device)
    dataset = checkpoint.metadata.get("dataset", "fashion-mnist")
    if args.data_dir is None and checkpoint.metadata.get("data_dir"):
        args.data_dir = Path(checkpoint.metadata["data_dir"])  # only searched first; the usual places follow
    test_data = _load(dataset, "test", args, device)
    binarize = checkpoint.train_config.binarize if checkpoint.train_config is not None else True
    binarize_seed = EVAL_BINARIZE_SEED if binarize else None
    n = len(test_data)
    print(f"{path}: {dataset} test set, {n:,} images{' (binarized, seed 0)' if binarize else ''}; "
          f"the ELBO, then log p(x) with K={k:,} importance samples per image ({n * k:,} decoder passes)", flush=True)

    model = checkpoint.model
    elbo = evaluate_elbo(model, test_data, binarize_seed=binarize_seed, seed=args.seed)
    print(f"test ELBO: {elbo['elbo']:.2f} nats per image "
          f"(reconstruction {elbo['reconstruction']:.2f}, KL {elbo['kl']:.2f})", flush=True)
    try:
        log_px = estimate_log_likelihood(model, test_data, k=k, batch_size=args.batch_size, seed=args.seed,
                                         binarize_seed=binarize_seed, progress=not args.no_progress,
                                         allow_long=args.allow_long)
    except ValueError as err:
        raise CLIError(f"{err} On the command line: --k, --limit, or --allow-long.") from None
    print(f"log p(x) importance-weighted estimate (K={k}): {log_px.mean().item():.2f} nats per image")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m vae_utils`` and the ``vae-utils`` script. Returns the exit status."""
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .data import DatasetNotFoundError, IdxFormatError
    from .training import TrainingDivergedError

    try:
        return train(args) if args.command == "train" else evaluate(args)
    except KeyboardInterrupt:
        print(f"interrupted: {args.command} stopped before it finished.", file=sys.stderr)
        return 130
    except (CLIError, CheckpointError, DatasetNotFoundError, IdxFormatError, TrainingDivergedError, OSError) as err:
        # OSError: a full disk, a read-only or missing folder; save_checkpoint's messages name the fix.
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        if isinstance(err, DatasetNotFoundError):
            message += " (On the command line: --data-dir DIR plays the part of root=, and downloading is allowed unless --no-download is given.)"
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
