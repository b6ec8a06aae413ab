"""How the cost of training and evaluation grows with the model, the batch and K (issue 12).

For each setting, `vae_utils.fit` trains a fresh model for one epoch on the first `--limit` training images
(the fastest of three, after a warm-up), and the floor of `run.py` (the step's matrix-product FLOPs over their measured rate, same shapes,
same run) is measured for that setting. Seconds are scaled to the full 60,000-image epoch; the ratio to the
floor does not depend on that scaling. The sweeps change one thing at a time from the reference model
(784-400-20, batch 128): the hidden width (400, 1000, 2000), the batch (128, 512) and the latent size
(2, 20, 100). Then `estimate_log_likelihood` on the first `--test-limit` test images for K = 100 ... 5000,
against its floor.

Writes benchmarks/results/scaling-<time>.json and benchmarks/scaling.png, and prints a markdown table.

    .venv/bin/python benchmarks/scaling.py                 # about 5 minutes on 2 CPU cores
    .venv/bin/python benchmarks/scaling.py --limit 3000 --test-limit 100 --ks 10 50   # smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import torch

import vae_utils
from run import (BATCH_SIZE, HIDDEN, LATENT, LR, RESULTS_DIR, evaluation_floor, load_average, machine_info,
                 mlp_layers, synchronize, training_floor)

FULL_EPOCH = 60_000
SETTINGS = {  # name -> (hidden, latent, batch); the sweeps change one thing at a time
    "reference": (HIDDEN, LATENT, BATCH_SIZE),
    "hidden 1000": (1000, LATENT, BATCH_SIZE),
    "hidden 2000": (2000, LATENT, BATCH_SIZE),
    "batch 512": (HIDDEN, LATENT, 512),
    "latent 2": (HIDDEN, 2, BATCH_SIZE),
    "latent 100": (HIDDEN, 100, BATCH_SIZE),
}
SWEEPS = {"hidden width": ["reference", "hidden 1000", "hidden 2000"], "batch size": ["reference", "batch 512"],
          "latent size": ["latent 2", "reference", "latent 100"]}


def time_epoch(train_data, device, hidden: int, latent: int, batch: int, seed: int = 0, repeats: int = 3) -> float:
    """The fastest of `repeats` one-epoch `fit`s of a fresh model, after a short warm-up fit of another."""
    def model():
        return vae_utils.VAE(vae_utils.VAEConfig(hidden_dims=(hidden,), latent_dim=latent, seed=seed))

    def config():
        return vae_utils.TrainConfig(epochs=1, batch_size=batch, lr=LR, seed=seed, device=str(device))

    vae_utils.fit(model(), train_data.subset(min(len(train_data), 10 * batch)), config=config(), progress=False)
    synchronize(device)
    return min(vae_utils.fit(model(), train_data, config=config(), progress=False).history.seconds[0]
               for _ in range(repeats))


def training_rows(train_data, device, gemm_seconds: float) -> dict:
    rows = {}
    for name, (hidden, latent, batch) in SETTINGS.items():
        seconds = time_epoch(train_data, device, hidden, latent, batch) * FULL_EPOCH / len(train_data)
        floor = training_floor(FULL_EPOCH, device, gemm_seconds, 5, batch, mlp_layers(hidden, latent))
        rows[name] = {"hidden": hidden, "latent": latent, "batch": batch, "seconds_per_epoch": seconds,
                      "floor_seconds_per_epoch": floor["seconds_per_epoch"],
                      "vs_floor": seconds / floor["seconds_per_epoch"], "load_average": load_average()}
        print(f"{name:12s} {seconds:7.2f} s/epoch, floor {floor['seconds_per_epoch']:6.2f} s, "
              f"{seconds / floor['seconds_per_epoch']:4.1f}x", flush=True)
    return rows


def evaluation_rows(test_data, device, ks: list[int], gemm_seconds: float) -> dict:
    model = vae_utils.VAE(vae_utils.VAEConfig()).to(device)  # untrained: speed does not depend on the weights
    rows = {}
    for k in ks:
        start = time.perf_counter()
        vae_utils.estimate_log_likelihood(model, test_data, k=k, progress=False)
        synchronize(device)
        seconds = time.perf_counter() - start
        floor = evaluation_floor(len(test_data), k, [1024, 4096, 16384], device, gemm_seconds, 5)["seconds"]
        rows[k] = {"seconds": seconds, "floor_seconds": floor, "vs_floor": seconds / floor}
        print(f"K = {k:5d}: {seconds:6.2f} s on {len(test_data)} images, floor {floor:6.2f} s, "
              f"{seconds / floor:4.1f}x", flush=True)
    return rows


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    training, evaluation = report["training"], report["evaluation"]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4), layout="constrained")
    for ax, (sweep, names) in zip(axes, SWEEPS.items()):
        labels = [name if name != "reference" else "reference\n784-400-20, B 128" for name in names]
        seconds = [training[name]["seconds_per_epoch"] for name in names]
        floors = [training[name]["floor_seconds_per_epoch"] for name in names]
        ax.bar(range(len(names)), seconds, color="C0", label="vae_utils.fit")
        ax.bar(range(len(names)), floors, color="C1", width=0.4, label="floor (matrix products)")
        for i, name in enumerate(names):
            ax.text(i, seconds[i], f"{training[name]['vs_floor']:.1f}x", ha="center", va="bottom", fontsize=9)
        ax.set_xticks(range(len(names)), labels, fontsize=9)
        ax.set(title=f"training: {sweep}", ylabel="seconds per 60k-image epoch")
        ax.set_ylim(top=1.2 * max(seconds))  # room for the ratio labels
    axes[0].legend(fontsize=9, loc="upper left")
    ks = sorted(evaluation, key=int)
    axes[3].loglog([int(k) for k in ks], [evaluation[k]["seconds"] for k in ks], "o-", label="estimate_log_likelihood")
    axes[3].loglog([int(k) for k in ks], [evaluation[k]["floor_seconds"] for k in ks], "s--", label="floor")
    axes[3].set(title=f"evaluation, {report['n_test']} images", xlabel="K (samples per image)", ylabel="seconds")
    axes[3].legend(fontsize=9)
    fig.suptitle(f"{report['machine']['cpu_model']}, {report['machine']['torch_threads']} threads, {report['device']}",
                 fontsize=10)
    fig.savefig(path, dpi=100)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--limit", type=int, default=12_000, help="training images per timed epoch (default 12000)")
    p.add_argument("--test-limit", type=int, default=500, help="test images for evaluation (default 500)")
    p.add_argument("--ks", type=int, nargs="+", default=[100, 500, 1000, 5000])
    p.add_argument("--gemm-seconds", type=float, default=0.05)
    p.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent / "scaling.png")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = vae_utils.pick_device(args.device)
    started = dt.datetime.now().astimezone()
    train = vae_utils.load_dataset("fashion-mnist", split="train", device=device).subset(args.limit)
    test = vae_utils.load_dataset("fashion-mnist", split="test", device=device).subset(args.test_limit)
    report = {"date": started.isoformat(timespec="seconds"), "machine": machine_info(device), "device": str(device),
              "n_train_timed": len(train), "n_test": len(test)}
    report["training"] = training_rows(train, device, args.gemm_seconds)
    report["evaluation"] = evaluation_rows(test, device, args.ks, args.gemm_seconds)
    report["load_average_end"] = load_average()
    out = RESULTS_DIR / f"scaling-{started.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    plot(report, args.plot)
    print("\n| setting | hidden | latent | batch | s/epoch | floor | x floor |\n|---|--:|--:|--:|--:|--:|--:|")
    for name, r in report["training"].items():
        print(f"| {name} | {r['hidden']} | {r['latent']} | {r['batch']} | {r['seconds_per_epoch']:.2f} | "
              f"{r['floor_seconds_per_epoch']:.2f} | {r['vs_floor']:.1f}x |")
    print(f"\n| K | seconds ({len(test)} images) | floor | x floor |\n|--:|--:|--:|--:|")
    for k, r in report["evaluation"].items():
        print(f"| {k} | {r['seconds']:.2f} | {r['floor_seconds']:.2f} | {r['vs_floor']:.1f}x |")
    print(f"\nfull numbers: {out}; plot: {args.plot}")
    return report


if __name__ == "__main__":
    main()
