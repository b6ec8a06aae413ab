"""pytorch/examples vae/main.py, run as a script: the usual loop, for the cold-start comparison.

Per epoch, as the example does: train (torchvision FashionMNIST + ToTensor + DataLoader, `.item()` per
batch), the test loss over the test set, and a PNG of 64 decoded prior samples. The model, loss, loader
and training epoch are `run.py`'s copies of the example's. Prints the test loss per epoch.

    .venv/bin/python benchmarks/usual_loop.py --epochs 10 --out /tmp/usual   # from any folder
    .venv/bin/python -m benchmarks.usual_loop --epochs 10 --out /tmp/usual  # from the repository root
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run.py beside it, from any folder or as -m
from run import (LR, ExampleVAE, example_loader, example_loss_function,  # noqa: E402
                 example_train_epoch, torchvision_fashion_mnist)


@torch.no_grad()
def test_loss(model, loader, device) -> float:
    model.eval()
    total = 0.0
    for data, _ in loader:
        data = data.to(device)
        recon, mu, logvar = model(data)
        total += example_loss_function(recon, data, mu, logvar).item()
    return total / len(loader.dataset)


def main(argv=None) -> None:
    from torchvision.utils import save_image

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    with tempfile.TemporaryDirectory() as tmp:
        train = example_loader(torchvision_fashion_mnist(Path(tmp), train=True), device)
        test = example_loader(torchvision_fashion_mnist(Path(tmp), train=False), device, shuffle=False)
        model = ExampleVAE().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        for epoch in range(1, args.epochs + 1):
            example_train_epoch(model, optimizer, train, device)
            print(f"epoch {epoch}: test loss {test_loss(model, test, device):.2f}", flush=True)
            with torch.no_grad():
                save_image(model.decode(torch.randn(64, 20, device=device)).view(64, 1, 28, 28).cpu(),
                           args.out / f"sample_{epoch}.png")


if __name__ == "__main__":
    main()
