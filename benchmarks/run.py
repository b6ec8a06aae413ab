"""Speed benchmark for vae_utils (issue 6): training and evaluation against two references.

One run on the machine it runs on reports

1. the usual loop: pytorch/examples vae/main.py (784-400-20 MLP, sigmoid + summed BCE + KL, Adam 1e-3,
   batch 128) fed by torchvision.datasets.FashionMNIST + transforms.ToTensor + DataLoader, `.item()` per batch;
2. vae_utils: the same architecture, batch size and optimizer through `vae_utils.fit`;
3. the floor: the matrix-product FLOPs of one epoch divided by the measured rate of matrix products with the
   model's own shapes (same run, same device);
4. evaluation: importance-weighted log p(x) with K samples over the test images through
   `vae_utils.estimate_log_likelihood`: seconds, peak memory, and its own floor.

It prints a short table of ratios and writes every number, with the machine's description, to
benchmarks/results/<timestamp>.json. See benchmarks/README.md.

    .venv/bin/python benchmarks/run.py                     # full run (1 timed epoch each, K=1000)
    .venv/bin/python benchmarks/run.py --limit 6000 --test-limit 500 --k 50   # smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import vae_utils

IMAGE_PIXELS = 784
HIDDEN = 400
LATENT = 20
BATCH_SIZE = 128
LR = 1e-3
# (in, out) of every Linear of the reference model, in forward order. fc21 and fc22 (mu and logvar heads)
# read the same input, so the floor counts them as one 400 -> 40 product (same FLOPs as two 400 -> 20).
TRAINING_LAYERS = [("fc1", IMAGE_PIXELS, HIDDEN), ("fc21+fc22", HIDDEN, 2 * LATENT),
                   ("fc3", LATENT, HIDDEN), ("fc4", HIDDEN, IMAGE_PIXELS)]
ENCODER_LAYERS = TRAINING_LAYERS[:2]
DECODER_LAYERS = TRAINING_LAYERS[2:]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------------------------------------
# Machine description and timing helpers




def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (what `uptime` prints); other users' work pollutes timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict:
    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "load_average_start": load_average(),
    }
    try:
        import torchvision

        info["torchvision_version"] = torchvision.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
    return info


# The benchmark's clock: wall time by default. `--clock cpu` switches to this process's CPU time, which other
# users' processes barely disturb; it equals the work's wall time only with one thread (--threads 1).
clock = time.perf_counter


def use_cpu_clock() -> None:
    global clock
    clock = time.process_time


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock timings cover the work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# ----------------------------------------------------------------------------------------------------------
# 3. The floor: FLOPs of the model's matrix products over their measured rate


def mlp_layers(hidden: int = HIDDEN, latent: int = LATENT) -> list[tuple[str, int, int]]:
    """(name, in, out) of every Linear of a 784-hidden-latent MLP VAE, in forward order."""
    return [("fc1", IMAGE_PIXELS, hidden), ("fc21+fc22", hidden, 2 * latent),
            ("fc3", latent, hidden), ("fc4", hidden, IMAGE_PIXELS)]


def training_gemms(batch: int, layers=TRAINING_LAYERS) -> list[dict]:
    """The matrix products of one training step (forward and backward) of the reference MLP.

    For a Linear with input x: [B, in], weight W: [out, in], autograd computes
        forward      y  = x @ W.T                [B, in]  x [in, out]
        grad input   gx = gy @ W                 [B, out] x [out, in]   (skipped for fc1: images need no grad)
        grad weight  gW = gy.T @ x               [out, B] x [B, in]
    each 2*B*in*out FLOPs. So one step costs 3 * forward FLOPs minus fc1's input gradient.
    """
    gemms = []
    for name, n_in, n_out in layers:
        gemms.append({"name": f"{name} forward", "m": batch, "k": n_in, "n": n_out, "layout": "x@W.T"})
        if name != "fc1":
            gemms.append({"name": f"{name} grad input", "m": batch, "k": n_out, "n": n_in, "layout": "g@W"})
        gemms.append({"name": f"{name} grad weight", "m": n_out, "k": batch, "n": n_in, "layout": "g.T@x"})
    return gemms


def forward_flops_per_example(layers) -> int:
    """2 * in * out per Linear per example (multiply + add); biases and activations are negligible."""
    return sum(2 * n_in * n_out for _, n_in, n_out in layers)


def time_gemm(m: int, k: int, n: int, layout: str, device: torch.device, min_seconds: float,
              repeats: int) -> float:
    """Best-of-`repeats` seconds for one product of the given shape and memory layout (like autograd's)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    if layout == "x@W.T":  # a: [m, k] activations, b: weight [n, k] used transposed
        a = torch.randn(m, k, generator=gen).to(device)
        b = torch.randn(n, k, generator=gen).to(device).t()
    elif layout == "g@W":  # a: [m, k] gradient, b: weight [k, n]
        a = torch.randn(m, k, generator=gen).to(device)
        b = torch.randn(k, n, generator=gen).to(device)
    elif layout == "g.T@x":  # a: gradient [k, m] used transposed, b: activations [k, n]
        a = torch.randn(k, m, generator=gen).to(device).t()
        b = torch.randn(k, n, generator=gen).to(device)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    out = torch.empty(m, n, device=device)
    for _ in range(3):  # warm-up: thread pool, caches, cuBLAS handles
        torch.mm(a, b, out=out)
    synchronize(device)
    # Calibrate how many products fill ~min_seconds so the timer's resolution does not matter.
    calls, elapsed = 1, 0.0
    while elapsed < min_seconds / 4:
        calls *= 2
        start = clock()
        for _ in range(calls):
            torch.mm(a, b, out=out)
        synchronize(device)
        elapsed = clock() - start
    calls = max(1, int(calls * min_seconds / max(elapsed, 1e-9)))
    best = math.inf
    for _ in range(repeats):
        start = clock()
        for _ in range(calls):
            torch.mm(a, b, out=out)
        synchronize(device)
        best = min(best, (clock() - start) / calls)
    return best


def measure_gemms(gemms: list[dict], device: torch.device, min_seconds: float, repeats: int) -> dict:
    """Time each product; return per-product rates and the aggregate rate (total FLOPs / total seconds)."""
    rows = []
    for g in gemms:
        seconds = time_gemm(g["m"], g["k"], g["n"], g["layout"], device, min_seconds, repeats)
        flops = 2 * g["m"] * g["k"] * g["n"]
        rows.append({**g, "flops": flops, "seconds": seconds, "gflops_per_s": flops / seconds / 1e9})
    total_flops = sum(r["flops"] for r in rows)
    total_seconds = sum(r["seconds"] for r in rows)
    return {"products": rows, "flops": total_flops, "seconds": total_seconds,
            "gflops_per_s": total_flops / total_seconds / 1e9, "load_average": load_average()}


def training_floor(n_train: int, device: torch.device, min_seconds: float, repeats: int,
                   batch: int = BATCH_SIZE, layers=TRAINING_LAYERS) -> dict:
    """Floor seconds/epoch = FLOPs(epoch) / rate(the step's own products at this batch size)."""
    step = measure_gemms(training_gemms(batch, layers), device, min_seconds, repeats)
    forward = forward_flops_per_example(layers)
    fc1_grad_input = 2 * layers[0][1] * layers[0][2]
    flops_per_example = 3 * forward - fc1_grad_input
    epoch_flops = n_train * flops_per_example
    rate = step["gflops_per_s"] * 1e9
    return {
        "formula": "FLOPs/epoch = N * (3 * sum_layers 2*in*out - 2*784*400)  "
                   "[forward + grad weight + grad input; fc1 has no input gradient]",
        "forward_flops_per_example": forward,
        "flops_per_example": flops_per_example,
        "epoch_flops": epoch_flops,
        "epoch_flops_3x_forward": n_train * 3 * forward,
        "rate_gflops_per_s": step["gflops_per_s"],
        "seconds_per_epoch": epoch_flops / rate,
        "seconds_per_epoch_3x_forward": n_train * 3 * forward / rate,
        "step_products": step,
    }


def evaluation_floor(n_test: int, k: int, rows_per_product: list[int], device: torch.device,
                     min_seconds: float, repeats: int) -> dict:
    """Floor seconds for the importance-weighted estimate: encoder once per image, decoder K times per image.

    FLOPs = N * 2*(784*400 + 400*40) + N*K * 2*(20*400 + 400*784). The rate is the best measured over several
    row counts M of [M, 20] x [20, 400] and [M, 400] x [400, 784] (the decoder's products when a chunk of
    samples is decoded at once), so the floor does not depend on how the library chunks.
    """
    best = None
    for m in rows_per_product:
        gemms = [{"name": f"{name} forward", "m": m, "k": n_in, "n": n_out, "layout": "x@W.T"}
                 for name, n_in, n_out in DECODER_LAYERS]
        measured = measure_gemms(gemms, device, min_seconds, repeats)
        measured["rows"] = m
        if best is None or measured["gflops_per_s"] > best["gflops_per_s"]:
            best = measured
    encoder_flops = n_test * forward_flops_per_example(ENCODER_LAYERS)
    decoder_flops = n_test * k * forward_flops_per_example(DECODER_LAYERS)
    rate = best["gflops_per_s"] * 1e9
    softplus = time_softplus(best["rows"], device, min_seconds, repeats)
    return {
        "formula": "FLOPs = N*2*(784*400 + 400*40) + N*K*2*(20*400 + 400*784)",
        "flops": encoder_flops + decoder_flops,
        "encoder_flops": encoder_flops,
        "decoder_flops": decoder_flops,
        "rate_gflops_per_s": best["gflops_per_s"],
        "rate_rows": best["rows"],
        "seconds": (encoder_flops + decoder_flops) / rate,
        "decoder_products": best,
        # Not part of the floor (the brief counts matmuls only), reported because on CPU it is not negligible:
        # the Bernoulli log-likelihood needs softplus(logits) for every one of the N*K*784 logits.
        "likelihood_softplus_seconds": softplus * n_test * k / best["rows"],
    }


def time_softplus(rows: int, device: torch.device, min_seconds: float, repeats: int) -> float:
    """Best seconds for softplus over [rows, 784] logits: the elementwise core of log Bernoulli(x | logits)."""
    logits = torch.randn(rows, IMAGE_PIXELS, device=device)
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        calls = 0
        while clock() - start < min_seconds:
            F.softplus(logits)
            calls += 1
            synchronize(device)
        best = min(best, (clock() - start) / calls)
    return best


# ----------------------------------------------------------------------------------------------------------
# 1. The usual loop: pytorch/examples vae/main.py, verbatim apart from FashionMNIST and the timing


class ExampleVAE(nn.Module):
    """The model of pytorch/examples vae/main.py."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode_logits(self, z):  # split out of decode() so the test ELBO can use a stable BCE-with-logits
        h3 = F.relu(self.fc3(z))
        return self.fc4(h3)

    def decode(self, z):
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def example_loss_function(recon_x, x, mu, logvar):
    """Reconstruction + KL divergence losses summed over all elements and batch (as in the example)."""
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def torchvision_fashion_mnist(tmp: Path, train: bool):
    """torchvision.datasets.FashionMNIST with ToTensor, built offline from the local idx files.

    torchvision looks for the decompressed idx files in <root>/FashionMNIST/raw/ (its download step would
    check the .gz md5 sums, which the Debian-packaged recompressed files do not match), so decompress there.
    """
    from torchvision import datasets, transforms

    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):  # torchvision checks that all four exist
        target = raw / name
        if not target.exists():
            with gzip.open(fashion_mnist_dir() / f"{name}.gz", "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return datasets.FashionMNIST(str(tmp), train=train, download=False, transform=transforms.ToTensor())


def fashion_mnist_dir() -> Path:
    """The folder of the idx .gz files: $VAE_DATA_DIR (or its fashion-mnist/ folder), else Debian's."""
    env = os.environ.get("VAE_DATA_DIR")
    for folder in ([Path(env) / "fashion-mnist", Path(env)] if env else []) + [DEBIAN_FASHION_MNIST]:
        if (folder / "train-images-idx3-ubyte.gz").is_file():
            return folder
    sys.exit("benchmark: no Fashion-MNIST .gz files; apt-get install dataset-fashion-mnist or set VAE_DATA_DIR")


def example_loader(dataset, device: torch.device, shuffle: bool = True):
    """The example's DataLoader: num_workers=1 and pin_memory on CUDA, defaults (in-process) otherwise."""
    kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=shuffle, **kwargs)


def example_train_epoch(model, optimizer, loader, device, max_batches: int | None = None) -> float:
    """The example's train(epoch), without its prints: one .item() per batch."""
    model.train()
    train_loss = 0
    seen = 0
    for batch_idx, (data, _) in enumerate(loader):
        if max_batches is not None and batch_idx >= max_batches:
            break
        data = data.to(device)
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = example_loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
        seen += len(data)
    return train_loss / max(seen, 1)


def run_usual_loop(train_set, device, epochs: int, warmup_batches: int, seed: int) -> dict:
    # Warm-up on a throwaway model (thread pool, allocator, DataLoader), so the timed model trains exactly
    # `epochs` epochs from its initialization, like the vae_utils model.
    torch.manual_seed(seed + 1)
    scratch = ExampleVAE().to(device)
    example_train_epoch(scratch, torch.optim.Adam(scratch.parameters(), lr=LR),
                        example_loader(train_set, device), device, max_batches=warmup_batches)
    synchronize(device)

    torch.manual_seed(seed)
    model = ExampleVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loader = example_loader(train_set, device)
    seconds, losses, loads = [], [], []
    for _ in range(epochs):
        start = clock()
        losses.append(example_train_epoch(model, optimizer, loader, device))
        synchronize(device)
        seconds.append(clock() - start)
        loads.append(load_average())
    return {"model": model, "epoch_seconds": seconds, "seconds_per_epoch": min(seconds),
            "train_loss_per_image": losses, "load_average": loads}


# ----------------------------------------------------------------------------------------------------------
# 2. vae_utils: the same model through the library's training path


def reference_config():
    return vae_utils.VAEConfig(architecture="mlp", hidden_dims=(HIDDEN,), latent_dim=LATENT,
                               likelihood="bernoulli")


def run_vae_utils(train_data, device, epochs: int, warmup_batches: int, seed: int, binarize: bool,
                  progress: bool, cuda_graph: bool = True, compile: bool = False) -> dict:
    def train_config(n_epochs):
        return vae_utils.TrainConfig(epochs=n_epochs, batch_size=BATCH_SIZE, lr=LR, seed=seed, binarize=binarize,
                                     device=str(device), cuda_graph=cuda_graph, compile=compile)

    # Warm-up: one short fit of a throwaway model (first-call costs: allocator, kernels, thread pool, and with
    # compile=True the compilation). It ends with a batch of the epoch's last size, so nothing compiles later.
    torch.manual_seed(seed + 1)
    scratch = vae_utils.VAE(reference_config()).to(device)
    warmup_images = min(len(train_data), warmup_batches * BATCH_SIZE + len(train_data) % BATCH_SIZE)
    start = time.perf_counter()
    vae_utils.fit(scratch, train_data.subset(warmup_images), config=train_config(1), progress=False)
    synchronize(device)
    warmup_seconds = time.perf_counter() - start

    torch.manual_seed(seed)
    model = vae_utils.VAE(reference_config()).to(device)
    start = clock()
    result = vae_utils.fit(model, train_data, config=train_config(epochs), progress=progress)
    synchronize(device)
    wall = clock() - start
    history = result.history
    # fit's own per-epoch wall times; with the CPU clock, the fit call's CPU time per epoch instead.
    epoch_seconds = [float(s) for s in history.seconds] if clock is time.perf_counter else [wall / epochs]
    return {"model": result.model, "binarize": binarize, "cuda_graph": cuda_graph, "compile": compile,
            "warmup_fit_seconds": warmup_seconds, "epoch_seconds": epoch_seconds,
            "seconds_per_epoch": min(epoch_seconds),
            "fit_wall_seconds": wall, "train_elbo": [float(v) for v in history.train_elbo],
            "load_average": load_average()}


# ----------------------------------------------------------------------------------------------------------
# Test ELBO: one function for both models, on the same images and the same noise


@torch.no_grad()
def test_elbo(encode: Callable, decode_logits: Callable, x: torch.Tensor, seed: int = 0,
              batch_size: int = 1000) -> torch.Tensor:
    """Per-image single-sample ELBO with a Bernoulli decoder and the closed-form KL, in nats: [N] on the CPU.

    x: [N, 1, 28, 28] in [0, 1] (continuous intensities or a fixed binarization). Per image:
    log p(x|z) = -BCEWithLogits(logits, x) summed over pixels, z = mu + sigma * eps (eps from `seed`),
    KL(q(z|x) || N(0, I)) summed over latent dimensions; ELBO = log p(x|z) - KL. Higher is better.
    On continuous x the mean is exactly minus the example's test loss per image.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    per_image = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            mu, logvar = encode(xb)
            eps = torch.randn(mu.shape, generator=gen).to(mu.device)
            z = mu + eps * torch.exp(0.5 * logvar)
            logits = decode_logits(z).reshape(len(xb), -1)
            reconstruction = -F.binary_cross_entropy_with_logits(
                logits, xb.reshape(len(xb), -1), reduction="none").sum(1)
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
            per_image.append((reconstruction - kl).double().cpu())
    return torch.cat(per_image)


def elbo_both_ways(encode, decode_logits, x_continuous, x_binary) -> dict[str, torch.Tensor]:
    return {"continuous": test_elbo(encode, decode_logits, x_continuous),
            "binarized": test_elbo(encode, decode_logits, x_binary)}


def elbo_means(per_image: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(values.mean()) for name, values in per_image.items()}


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean of a - b over the same images (same noise) and its standard error: is the gap real?"""
    diff = a - b
    return {"mean": float(diff.mean()), "standard_error": float(diff.std() / math.sqrt(len(diff)))}


# ----------------------------------------------------------------------------------------------------------
# 4. Evaluation, in a subprocess so that its peak memory is its own


def read_proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM (peak resident set) to the current RSS; Linux >= 4.0. Returns whether it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def evaluation_worker(spec_path: str) -> None:
    """Child process: load the trained model and the test images, time estimate_log_likelihood, report memory."""
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if spec.get("clock") == "cpu":
        use_cpu_clock()
    device = torch.device(spec["device"])
    model = vae_utils.VAE(vae_utils.VAEConfig.from_dict(spec["model_config"]))
    model.load_state_dict(torch.load(spec["state_path"], map_location="cpu", weights_only=True))
    model.to(device).eval()
    test = vae_utils.load_dataset("fashion-mnist", split="test", device=device)
    if spec["test_limit"]:
        test = test.subset(spec["test_limit"])
    kwargs = {"k": spec["k"], "seed": 0, "progress": False}
    # Warm-up on a few images (first-call costs), then reset the peak-memory counters.
    vae_utils.estimate_log_likelihood(model, test.subset(min(len(test), 10)), **{**kwargs, "k": min(spec["k"], 50)})
    synchronize(device)
    rss_before = read_proc_status_kib("VmRSS")
    peak_reset = reset_peak_rss()
    hwm_before = read_proc_status_kib("VmHWM")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    start = clock()
    log_px = vae_utils.estimate_log_likelihood(model, test, **kwargs)
    synchronize(device)
    seconds = clock() - start
    hwm_after = read_proc_status_kib("VmHWM")
    out = {
        "seconds": seconds, "n_images": len(test), "k": spec["k"],
        "mean_log_likelihood": float(log_px.mean()), "finite": bool(torch.isfinite(log_px).all()),
        "rss_before_mib": rss_before / 1024 if rss_before else None,
        "peak_rss_mib": hwm_after / 1024 if hwm_after else None,
        "peak_rss_reset_worked": peak_reset and hwm_before is not None and hwm_before <= (rss_before or 0) * 1.05,
        "load_average": load_average(),
    }
    if out["peak_rss_mib"] is not None and out["rss_before_mib"] is not None:
        out["peak_rss_increase_mib"] = out["peak_rss_mib"] - out["rss_before_mib"]
    if device.type == "cuda":
        out["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["cuda_increase_mib"] = (torch.cuda.max_memory_allocated(device) - cuda_before) / 2**20
    Path(spec["result_path"]).write_text(json.dumps(out))


def run_evaluation(model, device, k: int, test_limit: int | None, threads: int | None, clock_name: str,
                   tmp: Path) -> dict:
    state_path = tmp / "model.pt"
    torch.save({name: t.detach().cpu() for name, t in model.state_dict().items()}, state_path)
    spec = {"state_path": str(state_path), "model_config": model.config.to_dict(), "device": str(device),
            "k": k, "test_limit": test_limit, "threads": threads, "clock": clock_name,
            "result_path": str(tmp / "eval.json")}
    spec_path = tmp / "eval_spec.json"
    spec_path.write_text(json.dumps(spec))
    subprocess.run([sys.executable, __file__, "--evaluation-worker", str(spec_path)], check=True)
    return json.loads((tmp / "eval.json").read_text())


# ----------------------------------------------------------------------------------------------------------
# Optional profiles (--profile): where the time of vae_utils' training step and evaluation goes


def profile_library(train_data, device, seed: int, batches: int, k: int, out_stem: Path) -> dict:
    """torch.profiler tables (ops by self time) for a short fit and a small estimate_log_likelihood."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    subset = train_data.subset(min(len(train_data), batches * BATCH_SIZE))
    config = vae_utils.TrainConfig(epochs=1, batch_size=BATCH_SIZE, lr=LR, seed=seed, device=str(device))
    model = vae_utils.VAE(reference_config()).to(device)
    vae_utils.fit(model, subset, config=config, progress=False)  # warm-up
    paths = {}
    with profile(activities=activities) as prof:
        vae_utils.fit(model, subset, config=config, progress=False)
    paths["fit"] = out_stem.with_name(out_stem.name + "-profile-fit.txt")
    paths["fit"].write_text(f"vae_utils.fit, {len(subset)} images ({batches} batches of {BATCH_SIZE}), binarize=True\n"
                            + prof.key_averages().table(sort_by=sort_key, row_limit=30))
    test = vae_utils.load_dataset("fashion-mnist", split="test", device=device).subset(100)
    with profile(activities=activities) as prof:
        vae_utils.estimate_log_likelihood(model, test, k=k, progress=False)
    paths["evaluation"] = out_stem.with_name(out_stem.name + "-profile-evaluation.txt")
    paths["evaluation"].write_text(f"estimate_log_likelihood, 100 images, K={k}\n"
                                   + prof.key_averages().table(sort_by=sort_key, row_limit=30))
    return {name: str(path) for name, path in paths.items()}


# ----------------------------------------------------------------------------------------------------------
# Driver


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps; default: the best available")
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per training path (default 1)")
    p.add_argument("--warmup-batches", type=int, default=20, help="untimed batches before timing (default 20)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, default=None, help="use only the first N test images")
    p.add_argument("--k", type=int, default=1000, help="importance samples per image for evaluation (1000)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time (default), or this process's CPU time: robust to other users' load, but "
                        "only the work's time with --threads 1 (CPU only)")
    p.add_argument("--skip", nargs="*", default=[], choices=["usual", "vae_utils", "default", "eval"],
                   help="leave out parts: usual loop, vae_utils binarize=False, vae_utils default, eval")
    p.add_argument("--progress", action="store_true", help="let fit show its progress bar while timed")
    p.add_argument("--compile", action="store_true",
                   help="also time the default fit with TrainConfig(compile=True) (its compile time is the warm-up "
                        "fit's, reported as warmup_fit_seconds)")
    p.add_argument("--profile", action="store_true",
                   help="also write torch.profiler tables of a short fit and evaluation next to the JSON")
    p.add_argument("--gemm-seconds", type=float, default=0.05, help="seconds per matmul timing repeat")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/<time>.json)")
    p.add_argument("--evaluation-worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.evaluation_worker:
        evaluation_worker(args.evaluation_worker)
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        if torch.get_num_threads() != 1:
            sys.exit("--clock cpu counts the CPU time of all threads (spinning ones too): use it with --threads 1")
        use_cpu_clock()
    device = vae_utils.pick_device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        sys.exit("--clock cpu measures CPU time; GPU work needs --clock wall")
    started = dt.datetime.now().astimezone()
    report: dict = {"date": started.isoformat(timespec="seconds"), "machine": machine_info(device),
                    "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                  if k != "evaluation_worker"}}
    print(f"vae_utils benchmark on {device} ({report['machine']['cpu_model']}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads); load {report['machine']['load_average_start']}", flush=True)

    with tempfile.TemporaryDirectory(prefix="vae_bench_") as tmp_name:
        tmp = Path(tmp_name)
        # Data: torchvision's dataset for the usual loop, vae_utils' own for the library; the same images.
        tv_train = torchvision_fashion_mnist(tmp / "torchvision", train=True)
        tv_test = torchvision_fashion_mnist(tmp / "torchvision", train=False)
        train_data = vae_utils.load_dataset("fashion-mnist", split="train", device=device)
        if args.limit:
            tv_train = torch.utils.data.Subset(tv_train, range(min(args.limit, len(tv_train))))
            train_data = train_data.subset(min(args.limit, len(train_data)))
        n_train = len(train_data)
        assert len(tv_train) == n_train
        # Test images as the example's ToTensor gives them ([0, 1] floats), and one fixed binarization.
        x_test = (tv_test.data[: args.test_limit].float() / 255).unsqueeze(1).to(device)
        x_test_binary = torch.bernoulli(x_test.cpu(), generator=torch.Generator().manual_seed(args.seed)).to(device)
        report["data"] = {"n_train": n_train, "n_test": len(x_test)}

        print("measuring matrix-product rates ...", flush=True)
        report["training_floor"] = training_floor(n_train, device, args.gemm_seconds, repeats=5)

        elbos = {}
        if "usual" not in args.skip:
            print(f"usual loop: {args.epochs} epoch(s) on {n_train} images ...", flush=True)
            usual = run_usual_loop(tv_train, device, args.epochs, args.warmup_batches, args.seed)
            m = usual.pop("model").eval()
            elbos["usual"] = elbo_both_ways(lambda x: m.encode(x.view(-1, 784)), m.decode_logits, x_test,
                                            x_test_binary)
            report["usual_loop"] = usual | {"test_elbo": elbo_means(elbos["usual"])}

        # (skip key, report key, binarize, cuda_graph, compile); on CUDA the default also runs without its graph.
        library_runs = [("vae_utils", "vae_utils_binarize_False", False, True, False),
                        ("default", "vae_utils_binarize_True", True, True, False)]
        if device.type == "cuda":
            library_runs.append(("default", "vae_utils_default_eager", True, False, False))
        if args.compile:
            library_runs.append(("default", "vae_utils_compiled", True, True, True))
        for key, report_key, binarize, cuda_graph, compile in library_runs:
            if key in args.skip:
                continue
            print(f"vae_utils.fit (binarize={binarize}, cuda_graph={cuda_graph}, compile={compile}): "
                  f"{args.epochs} epoch(s) ...", flush=True)
            run = run_vae_utils(train_data, device, args.epochs, args.warmup_batches, args.seed, binarize,
                                args.progress, cuda_graph, compile)
            m = run.pop("model").eval()
            elbos[report_key] = elbo_both_ways(m.encode, m.decode, x_test, x_test_binary)
            run["test_elbo"] = elbo_means(elbos[report_key])
            if "usual" in elbos:  # paired over the same images and noise: vae_utils minus the usual loop
                run["test_elbo_minus_usual"] = {rep: paired_difference(elbos[report_key][rep], elbos["usual"][rep])
                                                for rep in elbos[report_key]}
            # The library's own evaluator, for reference (its own binarization convention).
            test_set = vae_utils.load_dataset("fashion-mnist", split="test", device=device)
            if args.test_limit:
                test_set = test_set.subset(args.test_limit)
            run["vae_utils_evaluate_elbo"] = {k: float(v) for k, v in vae_utils.evaluate_elbo(m, test_set).items()
                                              if isinstance(v, (int, float)) or torch.is_tensor(v)}
            report[report_key] = run
            eval_model = m

        if "eval" not in args.skip:
            if "eval_model" not in locals():
                eval_model = vae_utils.VAE(reference_config())  # untrained: speed does not depend on weights
            n_test = len(x_test)
            print(f"evaluation: estimate_log_likelihood, K={args.k}, {n_test} images ...", flush=True)
            evaluation = run_evaluation(eval_model, device, args.k, args.test_limit, args.threads, args.clock, tmp)
            evaluation["floor"] = evaluation_floor(n_test, args.k, [1024, 4096, 16384], device,
                                                   args.gemm_seconds, repeats=5)
            report["evaluation"] = evaluation

    out = args.out or RESULTS_DIR / f"{started.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.profile:
        print("profiling a short fit and evaluation ...", flush=True)
        report["profiles"] = profile_library(train_data, device, args.seed, batches=50, k=min(args.k, 1000),
                                             out_stem=out.with_suffix(""))
    report["load_average_end"] = load_average()
    report["summary"] = summarize(report)
    print_table(report)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nfull numbers: {out}")
    return report


def summarize(report: dict) -> dict:
    floor = report["training_floor"]["seconds_per_epoch"]
    s: dict = {"floor_seconds_per_epoch": floor}
    usual = report.get("usual_loop", {}).get("seconds_per_epoch")
    for key in ("usual_loop", "vae_utils_binarize_False", "vae_utils_binarize_True", "vae_utils_default_eager",
                "vae_utils_compiled"):
        if key in report:
            sec = report[key]["seconds_per_epoch"]
            s[key] = {"seconds_per_epoch": sec, "vs_floor": sec / floor,
                      "speedup_vs_usual": usual / sec if usual else None,
                      "test_elbo": report[key]["test_elbo"]}
            if "test_elbo_minus_usual" in report[key]:
                s[key]["test_elbo_minus_usual"] = report[key]["test_elbo_minus_usual"]
    if "evaluation" in report:
        e = report["evaluation"]
        s["evaluation"] = {"seconds": e["seconds"], "floor_seconds": e["floor"]["seconds"],
                           "vs_floor": e["seconds"] / e["floor"]["seconds"],
                           "peak_rss_mib": e.get("peak_rss_mib"), "cuda_peak_mib": e.get("cuda_peak_allocated_mib")}
    return s


def print_table(report: dict) -> None:
    s = report["summary"]
    m = report["machine"]
    print(f"\n{report['date']}  {m['device']}  {m['cpu_model']}  {m['cpu_count']} cores, {m['torch_threads']} "
          f"threads  torch {m['torch_version']}" + (f"  GPU {m['gpu_name']}" if "gpu_name" in m else ""))
    print(f"load average: start {m['load_average_start']}  end {report['load_average_end']}  "
          f"clock: {report['arguments']['clock']}")
    print(f"training on {report['data']['n_train']} images, test ELBO on {report['data']['n_test']} "
          f"(nats/image; single-sample, same noise for every model)\n")
    header = f"{'':34s}{'s/epoch':>9s}{'usual/x':>9s}{'x/floor':>9s}{'ELBO cont':>11s}{'ELBO bin':>10s}"
    print(header)
    names = {"usual_loop": "usual loop (torchvision+DataLoader)", "vae_utils_binarize_False": "vae_utils.fit binarize=False",
             "vae_utils_binarize_True": "vae_utils.fit default (binarize)",
             "vae_utils_default_eager": "  the same, cuda_graph=False",
             "vae_utils_compiled": "  the same, compile=True"}
    for key, label in names.items():
        if key in s:
            r = s[key]
            speed = f"{r['speedup_vs_usual']:.1f}x" if r["speedup_vs_usual"] else "-"
            print(f"{label:34s}{r['seconds_per_epoch']:9.2f}{speed:>9s}{r['vs_floor']:8.1f}x"
                  f"{r['test_elbo']['continuous']:11.1f}{r['test_elbo']['binarized']:10.1f}")
    for key, label in list(names.items())[1:]:
        if key in s and "test_elbo_minus_usual" in s[key]:
            d = s[key]["test_elbo_minus_usual"]
            print(f"  {label} minus usual loop, same images and noise: "
                  + ", ".join(f"{rep} {v['mean']:+.2f} +- {v['standard_error']:.2f}" for rep, v in d.items())
                  + " nats")
    if "vae_utils_compiled" in report:
        print(f"  compile=True: its warm-up fit ({report['vae_utils_compiled']['warmup_fit_seconds']:.1f} s) "
              "includes compiling both batch shapes")
    tf = report["training_floor"]
    print(f"{'floor (matmul FLOPs / rate)':34s}{s['floor_seconds_per_epoch']:9.2f}{'':9s}{'1.0x':>9s}"
          f"   [{tf['epoch_flops'] / 1e9:.0f} GFLOP at {tf['rate_gflops_per_s']:.1f} GFLOP/s]")
    if "evaluation" in s:
        e, ef = report["evaluation"], report["evaluation"]["floor"]
        mem = (f"peak RSS {e['peak_rss_mib']:.0f} MiB (+{e.get('peak_rss_increase_mib', float('nan')):.0f})"
               if e.get("peak_rss_mib") else "")
        if e.get("cuda_peak_allocated_mib") is not None:
            mem += f", CUDA peak {e['cuda_peak_allocated_mib']:.0f} MiB"
        print(f"\nevaluation K={e['k']} on {e['n_images']} images: {e['seconds']:.1f} s, floor {ef['seconds']:.1f} s "
              f"({ef['flops'] / 1e12:.2f} TFLOP at {ef['rate_gflops_per_s']:.1f} GFLOP/s, M={ef['rate_rows']}) -> "
              f"{s['evaluation']['vs_floor']:.1f}x floor; {mem}; mean log p(x) {e['mean_log_likelihood']:.1f}")
        print(f"  (softplus of the N*K*784 logits alone: {ef['likelihood_softplus_seconds']:.1f} s, not in the floor)")


if __name__ == "__main__":
    main()
