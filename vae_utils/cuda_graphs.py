"""A training step replayed from a CUDA graph: the same step, one launch per batch instead of ~70.

A VAE step on a small model is a few dozen tiny kernels (forward, backward, Adam, the epoch sums),
and on a GPU the time goes to launching them from Python, not to running them. A CUDA graph records
the kernels of one step once; each later batch is copied into the graph's input tensors and the whole
step is replayed with one call (PyTorch's "whole network capture", torch.cuda.graphs). The math is
the step's own: ``GraphedStep`` wraps whatever ``step`` computes, and ``fit`` calls it where it would
call the step itself.

What a replayed step requires: batches of one shape (other shapes, such as an epoch's smaller last
batch, run eagerly), no host sync inside the step, an optimizer built with ``capturable=True``, and
every number that changes between steps held in a device tensor updated in place (a Python float is
frozen into the graph). ``fit`` uses it on CUDA when those hold (``TrainConfig.cuda_graph``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["GraphedStep"]

WARMUP_STEPS = 3  # eager steps on a side stream before capture (Adam's state, cuBLAS workspaces)


class GraphedStep:
    """``step(batch) -> Tensor`` (a fixed-shape tensor of sums, on the device), replayed from a CUDA graph
    once it has been captured. batch: a tensor ``x: [B, C, H, W]`` or a tuple of tensors (``(x, y)``).

    The first ``WARMUP_STEPS`` batches run eagerly on a side stream, the next one of the same shapes is
    captured, and every later batch of those shapes is copied into the graph's inputs and replayed; the
    returned sums are the graph's output tensor, valid until the next call. ``replays`` counts the
    replayed steps (for tests and benchmarks).
    """

    def __init__(self, step: Callable[[Any], Tensor], warmup_steps: int = WARMUP_STEPS):
        self.step = step
        self.warmup_left = warmup_steps
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: tuple[Tensor, ...] = ()
        self.static_sums: Tensor | None = None
        self.replays = 0

    def __call__(self, batch: Any) -> Tensor:
        inputs = (batch,) if isinstance(batch, Tensor) else tuple(batch)
        if self.graph is not None and [t.shape for t in inputs] == [t.shape for t in self.static_inputs]:
            for static, value in zip(self.static_inputs, inputs):
                static.copy_(value)
            self.graph.replay()
            self.replays += 1
            return self.static_sums
        if self.graph is None and self.warmup_left == 0:
            return self._capture(inputs, isinstance(batch, Tensor))
        return self.step(batch) if self.graph is not None else self._warm_up(batch)

    def _warm_up(self, batch: Any) -> Tensor:
        self.warmup_left -= 1
        device = (batch if isinstance(batch, Tensor) else batch[0]).device
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            sums = self.step(batch)
        torch.cuda.current_stream(device).wait_stream(side)
        return sums

    def _capture(self, inputs: tuple[Tensor, ...], single: bool) -> Tensor:
        """Record one step on private copies of the inputs (capturing runs nothing), then replay it for them."""
        self.static_inputs = tuple(t.clone() for t in inputs)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_sums = self.step(self.static_inputs[0] if single else self.static_inputs)
        self.graph.replay()
        self.replays += 1
        return self.static_sums
