"""Training steps replayed from a CUDA graph: the same step, one launch per batch instead of ~70.

A VAE step on a small model is a few dozen tiny kernels (forward, backward, Adam, the epoch sums),
and on a GPU the time goes to launching them from Python, not to running them. A CUDA graph records
the kernels of one step once; each later batch is copied into the graph's input tensor and the whole
step is replayed with one call (PyTorch's "whole network capture", torch.cuda.graphs). The math is
the step's own: ``GraphedSteps`` records whatever ``step`` computes.

What a replayed step requires: batches of one shape (other shapes, such as an epoch's smaller last
batch, run eagerly), no host sync inside the step, an optimizer built with ``capturable=True``, and
every number that changes between steps held in a device tensor updated in place (a Python float is
frozen into the graph). ``fit`` uses it on CUDA when those hold (``TrainConfig.cuda_graph``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from .model import mark_checked

__all__ = ["GraphedSteps"]

WARMUP_STEPS = 3  # eager steps on a side stream before capture (Adam's state, cuBLAS workspaces)


class GraphedSteps:
    """Run ``step(x) -> Tensor`` over batches, replaying it from a CUDA graph once it has been captured.

    step: one training step on ``x: [B, C, H, W]`` (values in [0, 1]) that returns a tensor of sums
    (any fixed shape, on the device). ``epoch(batches)`` returns the element-wise total of those sums
    over the batches. The first ``WARMUP_STEPS`` batches run eagerly on a side stream, the next one of
    the same shape is captured, and every later batch of that shape is copied into the graph's input
    and replayed. ``replays`` counts the replayed steps (for tests and benchmarks).
    """

    def __init__(self, step: Callable[[Tensor], Tensor], warmup_steps: int = WARMUP_STEPS):
        self.step = step
        self.warmup_left = warmup_steps
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_x: Tensor | None = None
        self.static_sums: Tensor | None = None
        self.total: Tensor | None = None
        self.replays = 0

    def epoch(self, batches: Iterable[Tensor]) -> Tensor:
        """Sum of ``step(x)`` over ``batches``, a device tensor; nothing here waits for the device."""
        self.total = None
        for x in batches:
            if self.graph is not None and x.shape == self.static_x.shape:
                self.static_x.copy_(x)
                self.graph.replay()
                self.replays += 1
                self._add(self.static_sums)
            elif self.graph is None and self.warmup_left == 0:
                self._capture(x)
            else:
                self._add(self._eager(x))
        return self.total

    def _add(self, sums: Tensor) -> None:
        self.total = sums.clone() if self.total is None else self.total.add_(sums)

    def _eager(self, x: Tensor) -> Tensor:
        if self.graph is not None:
            return self.step(x)
        self.warmup_left -= 1
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            sums = self.step(x)
        torch.cuda.current_stream(x.device).wait_stream(side)
        return sums

    def _capture(self, x: Tensor) -> None:
        """Record one step on a private copy of ``x`` (capturing runs nothing), then replay it for ``x``."""
        self.static_x = mark_checked(x.clone())
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_sums = self.step(self.static_x)
        self.graph.replay()
        self.replays += 1
        self._add(self.static_sums)
