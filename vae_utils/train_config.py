"""How to train: ``TrainConfig``, a dataclass of plain values (it goes into checkpoints as a dict)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from .validation import check_flag, check_int, check_real

__all__ = ["TrainConfig", "OBJECTIVES"]

OBJECTIVES = ("elbo", "iw")


@dataclass
class TrainConfig:
    """How to train. All fields are plain values, so the config goes into checkpoints as a dict.

    epochs: passes over the training set. batch_size: examples per step. lr: Adam's learning rate.
    objective: "elbo" (the VAE: maximize reconstruction - beta * KL, one reparameterized sample) or
        "iw" (the IWAE: maximize the importance-weighted bound with ``k`` samples).
    beta: weight of the KL term with objective="elbo" (1 = the ELBO; >1 a beta-VAE).
    kl_warmup_epochs: beta ramps linearly from 0 to ``beta`` over this many epochs, step by step
        (0 = no warm-up; objective="elbo" only).
    k: importance samples K per example with objective="iw" (k=1 there is the ELBO).
    seed: seeds python/torch, the batch order and the binarization (the initial weights come from
        ``VAEConfig.seed``). binarize: dynamic binarization of the training images (each pixel
        redrawn as Bernoulli(gray) every time; the test set is binarized once with a fixed seed).
    device: None picks cuda, mps, then cpu. eval_batch_size: batch size for the test-set ELBO.
    cuda_graph: on a CUDA device, replay each full-size step from a CUDA graph (``vae_utils.cuda_graphs``:
        one launch per step instead of dozens); ignored on other devices, with a KL warm-up (beta then
        changes every step) and with an optimizer you pass to ``fit`` unless it was built with capturable=True.
    compile: compile the objective (the forward pass and its backward) with ``torch.compile`` (inductor;
        a C++ compiler on a CPU, Triton on a GPU). Off by default: a step of the reference model gets up to
        9% faster on a 2-core CPU and an epoch 1.4x faster on an H200, but the first compile takes 20-25 s
        (4-6 s once torch's cache holds it), more than a 10-epoch run saves (benchmarks/RESULTS.md). Its
        noise comes from inductor's own generator, so a compiled run matches the eager one in
        distribution, not bit for bit.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    beta: float = 1.0
    kl_warmup_epochs: float = 0
    seed: int = 0
    binarize: bool = True
    device: str | None = None
    eval_batch_size: int = 1000
    objective: str = "elbo"
    k: int = 1
    cuda_graph: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.device, torch.device):
            self.device = str(self.device)
        for name, minimum, example in (("epochs", 0, "epochs=10"), ("batch_size", 1, "batch_size=128"),
                                       ("eval_batch_size", 1, "eval_batch_size=1000"), ("seed", None, "seed=0"),
                                       ("k", 1, "k=5")):
            check_int("TrainConfig", name, getattr(self, name), minimum, example)
        self.lr = check_real("TrainConfig", "lr", self.lr, "> 0", "lr=1e-3")
        self.beta = check_real("TrainConfig", "beta", self.beta, ">= 0", "beta=1.0")
        self.kl_warmup_epochs = check_real("TrainConfig", "kl_warmup_epochs", self.kl_warmup_epochs, ">= 0",
                                           "kl_warmup_epochs=2")
        for flag in ("binarize", "cuda_graph", "compile"):
            check_flag("TrainConfig", flag, getattr(self, flag))
        if self.device is not None and not isinstance(self.device, str):
            raise ValueError(f"TrainConfig.device must be a str such as 'cpu' or 'cuda', or None, got {self.device!r}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"TrainConfig.objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        if self.objective == "iw" and (self.beta != 1 or self.kl_warmup_epochs != 0):
            raise ValueError("TrainConfig: beta and kl_warmup_epochs apply to objective='elbo' only; "
                             f"with objective='iw' leave them at 1 and 0 (got beta={self.beta:g}, "
                             f"kl_warmup_epochs={self.kl_warmup_epochs:g}).")
        if self.objective == "elbo" and self.k != 1:
            raise ValueError(f"TrainConfig.k={self.k} needs objective='iw' (importance-weighted training); "
                             "the ELBO uses one sample. Write TrainConfig(objective='iw', k=...).")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of to_dict; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"Unknown TrainConfig field(s) {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**values)
