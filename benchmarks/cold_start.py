"""The whole process, from a cold start: `python -m vae_utils train` against the usual loop as a script.

Both run in a fresh Python process for the same number of epochs on the same device: imports, data,
training, the per-epoch test evaluation and the files they write (the CLI: checkpoint, history and PNGs;
the usual loop: a PNG of samples per epoch). Wall seconds of each process, and their ratio.

With --compile it also runs `train --compile` twice with a new, empty inductor cache
(TORCHINDUCTOR_CACHE_DIR): the first process compiles from scratch, the second reuses the first's cache,
which is what a reader sees on a second run.

    .venv/bin/python benchmarks/cold_start.py --epochs 10        # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=HERE.parent, capture_output=True, text=True,
                          env=None if env is None else os.environ | env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="also time `train --compile`, cold and warm cache")
    args = p.parse_args(argv)
    train = [sys.executable, "-m", "vae_utils", "train", "--epochs", str(args.epochs), "--device", args.device]
    with tempfile.TemporaryDirectory() as tmp:
        cli = timed([*train, "--out", f"{tmp}/cli"])
        usual = timed([sys.executable, str(HERE / "usual_loop.py"), "--epochs", str(args.epochs), "--device",
                       args.device, "--out", f"{tmp}/usual"])
        compiled = {}
        if args.compile:
            cache = {"TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor-cache"}
            compiled = {"cli_compile_first_process_seconds": timed([*train, "--compile", "--out", f"{tmp}/c1"], cache),
                        "cli_compile_second_process_seconds": timed([*train, "--compile", "--out", f"{tmp}/c2"], cache)}
    report = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "epochs": args.epochs,
              "device": args.device, "cli_seconds": cli, "usual_loop_seconds": usual, "speedup": usual / cli,
              **compiled}
    print(f"{args.epochs} epochs from a cold start on {args.device}: python -m vae_utils train {cli:.1f} s, "
          f"the usual loop as a script {usual:.1f} s: {usual / cli:.1f}x")
    if compiled:
        print(f"train --compile: first process (empty cache) {compiled['cli_compile_first_process_seconds']:.1f} s, "
              f"second process (cache reused) {compiled['cli_compile_second_process_seconds']:.1f} s")
    out = HERE / "results" / f"cold-start-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
