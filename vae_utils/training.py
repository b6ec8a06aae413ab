"""Training: ``train_step`` and ``train_epoch`` (the plain loop) and ``fit`` (that loop with history, KL
warm-up, a snapshot against NaN, clean interrupts and a progress bar), for every model of the library.

``train_epoch`` is the loop a reader writes by hand; ``fit`` runs it. Neither waits for the device inside
an epoch: the sums of the objective, ELBO, reconstruction and KL and a record of the first non-finite loss
stay device tensors and are read once per epoch, so on a GPU the host queues batches ahead while the device
computes (no per-batch ``.item()``). On CUDA, ``fit`` replays the same step from a CUDA graph
(``vae_utils.cuda_graphs``) and, with ``compile=True``, runs the same objective through ``torch.compile``.
"""

from __future__ import annotations

import copy
import functools
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .data import ImageDataset
from .device import pick_device, seed_everything
from .evaluation import EVAL_BINARIZE_SEED, evaluate_elbo
from .objectives import ELBO, elbo_objective, elbo_terms, estimate_elbo, iw_objective, split_batch
from .train_config import TrainConfig

__all__ = ["History", "FitResult", "TrainingDivergedError", "train_step", "train_epoch", "fit",
           "default_optimizer", "ticking"]

PROGRESS_EVERY = 20  # the progress bar advances every this many batches (a count only: no host sync)


_HISTORY_KEYS = ("epoch", "train_elbo", "train_reconstruction", "train_kl", "train_objective", "test_elbo",
                 "test_reconstruction", "test_kl", "beta", "seconds")


@dataclass
class History:
    """Per-epoch record of training; every field is a list with one entry per completed epoch.

    ELBO, reconstruction and KL are means per example in nats (ELBO = reconstruction - KL, higher is
    better). ``train_*`` average over the epoch's batches while the model was changing, and
    ``train_elbo`` is the true ELBO (beta = 1) even when a beta, a warm-up or the IW bound is what
    was optimized; ``train_objective`` is the mean of what was maximized (reconstruction - beta * KL,
    or the K-sample IW bound). ``beta`` is the weight in use at the end of the epoch. ``test_*`` are
    None without a test set. ``seconds`` is the wall time of the epoch including the test evaluation.
    """

    epoch: list[int] = field(default_factory=list)
    train_elbo: list[float] = field(default_factory=list)
    train_reconstruction: list[float] = field(default_factory=list)
    train_kl: list[float] = field(default_factory=list)
    train_objective: list[float | None] = field(default_factory=list)
    test_elbo: list[float | None] = field(default_factory=list)
    test_reconstruction: list[float | None] = field(default_factory=list)
    test_kl: list[float | None] = field(default_factory=list)
    beta: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.epoch)

    def append(self, **values: Any) -> None:
        """Add one epoch; ``values`` must name every field."""
        missing = set(_HISTORY_KEYS) - set(values)
        if missing:
            raise ValueError(f"History.append is missing {sorted(missing)}.")
        for key in _HISTORY_KEYS:
            getattr(self, key).append(values.get(key))

    def last(self) -> dict[str, Any]:
        """The last epoch's values as a dict ({} before the first epoch)."""
        if not self.epoch:
            return {}
        return {key: getattr(self, key)[-1] for key in _HISTORY_KEYS}

    def to_dict(self) -> dict[str, list]:
        """Plain lists (JSON and ``torch.load(weights_only=True)`` safe)."""
        return {key: list(getattr(self, key)) for key in _HISTORY_KEYS}

    @classmethod
    def from_dict(cls, values: dict[str, list]) -> History:
        unknown = set(values) - set(_HISTORY_KEYS)
        if unknown:
            raise ValueError(f"Unknown History field(s) {sorted(unknown)}; known: {list(_HISTORY_KEYS)}.")
        values = {key: values.get(key, []) for key in _HISTORY_KEYS}
        lengths = {key: len(value) for key, value in values.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"History fields must all have the same length; got {lengths}.")
        return cls(**{key: list(value) for key, value in values.items()})


class FitResult(NamedTuple):
    """What ``fit`` returns: the trained model (on the training device), its history, the optimizer
    (for resuming), and whether training was interrupted (Ctrl-C / kernel interrupt)."""

    model: nn.Module
    history: History
    optimizer: torch.optim.Optimizer
    interrupted: bool = False


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or inf. ``epoch`` and ``step`` (1-based) say where; ``model`` and
    ``optimizer`` are restored to the end of the last good epoch, whose ``history`` is attached."""

    def __init__(self, message: str, *, epoch: int, step: int, model: nn.Module,
                 optimizer: torch.optim.Optimizer, history: History):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.model = model
        self.optimizer = optimizer
        self.history = history


SUM_KEYS = ("n", "objective", "elbo", "reconstruction", "kl")


def train_step(model: nn.Module, batch: Any, optimizer: torch.optim.Optimizer,
               objective: Callable[[nn.Module, Any], ELBO]) -> Tensor:
    """One step on the loss ``-objective(model, batch).objective.mean()`` (nats per example, minimized):
    clear the gradients, backpropagate, update. batch: images ``x: [B, C, H, W]`` in [0, 1], or ``(x, y)``
    for a conditional model. Returns the step's sums over the batch, stacked in the order of ``SUM_KEYS``:
    a device tensor [5] (nothing here waits for the device)."""
    terms = objective(model, batch)
    loss = -terms.objective.mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        r, kl = terms.reconstruction.sum(), terms.kl.sum()
        return torch.stack((torch.ones_like(terms.objective).sum(), terms.objective.sum(), r - kl, r, kl))


def train_epoch(model: nn.Module, batches: Iterable[Any], optimizer: torch.optim.Optimizer,
                objective: Callable[[nn.Module, Any], ELBO] | None = None,
                step: Callable[[Any], Tensor] | None = None) -> dict[str, Tensor]:
    """One pass of the plain loop: ``train_step`` on every batch. objective: ``(model, batch) -> ELBO``
    with [B] terms, default ``objectives.elbo_objective()``. step: ``batch -> sums``, default ``train_step``
    with this model, optimizer and objective (``fit`` passes the same step replayed from a CUDA graph).
    Returns the sums over the examples, 0-d tensors on the model's device (read them after the epoch),
    keyed ``n``, ``objective`` (what was maximized), ``elbo`` (reconstruction - KL), ``reconstruction``, ``kl``."""
    objective = objective or elbo_objective()
    step = step or functools.partial(train_step, model, optimizer=optimizer, objective=objective)
    model.train()
    sums = torch.zeros(len(SUM_KEYS), device=next(model.parameters()).device)
    for batch in batches:
        sums += step(batch)
    return dict(zip(SUM_KEYS, sums.unbind()))


def fit(model: nn.Module, train_data: ImageDataset, test_data: ImageDataset | None = None,
        config: TrainConfig | None = None, optimizer: torch.optim.Optimizer | None = None,
        callback: Callable[[History], None] | None = None, progress: bool = True) -> FitResult:
    """Train ``model`` (a VAE, FlowVAE or ConditionalVAE): ``config.epochs`` calls of ``train_epoch``.

    test_data: its ELBO after every epoch (binarized once, fixed seed, when ``config.binarize``).
    optimizer: default Adam(lr=config.lr). callback(history): after each epoch (a live plot).
    progress: a bar over batches that ticks every 20 (a count: no host sync). The model and data
    move to ``config.device``. Returns ``FitResult(model, history, optimizer, interrupted)``.

    Ctrl-C (or the notebook's stop button) stops cleanly: ``interrupted=True``, the weights of the
    steps taken, the completed epochs in the history. A NaN or inf loss raises
    ``TrainingDivergedError`` (epoch and step), with model and optimizer restored to the end of the
    previous epoch; it is checked with the epoch's sums, the one host sync per epoch.
    """
    config = TrainConfig() if config is None else config
    _check_fit_inputs(model, train_data, test_data, config, optimizer)
    history, run, snapshot, interrupted = History(), None, None, False
    try:
        run = _FitRun(model, train_data, test_data, config, optimizer, progress)  # device, seeds, step
        for epoch in range(1, config.epochs + 1):
            start = time.perf_counter()
            snapshot = _Snapshot(model, run.optimizer)
            run.objective.new_epoch()
            sums = train_epoch(model, run.batches(), run.optimizer, step=run.step)
            train = _epoch_means(sums, run, snapshot, epoch, history)  # the epoch's one host sync
            history.append(epoch=epoch, **train, **_test_terms(model, run.eval_set, config),
                           beta=run.objective.beta, seconds=time.perf_counter() - start)
            run.show(history)
            if callback is not None:
                callback(history)
    except KeyboardInterrupt:
        interrupted = True
        if run is not None:
            _restore_if_diverged(run.objective, snapshot)
    finally:
        if run is not None and run.bar is not None:
            run.bar.close()
    model.eval()
    optimizer = run.optimizer if run is not None else optimizer or default_optimizer(model, config.lr)
    return FitResult(model, history, optimizer, interrupted)


class _FitRun:
    """What fit sets up before its first epoch: the device and seeds, the data there, the objective, the
    optimizer and the training step (replayed from a CUDA graph where one applies), the progress bar."""

    def __init__(self, model, train_data, test_data, config: TrainConfig, optimizer, progress: bool):
        self.model, self.config = model, config
        device = pick_device(config.device)
        seed_everything(config.seed)
        self.generator = torch.Generator(device=device).manual_seed(config.seed)  # batch order, binarization
        model.to(device)
        self.train_data = train_data.to(device)
        self.eval_set = _evaluation_set(test_data, config, device)
        self.steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
        self.objective = _FitObjective(config, self.steps_per_epoch, device)
        graphed = _cuda_graph_applies(config, device, optimizer)
        self.optimizer = optimizer or default_optimizer(model, config.lr, capturable=graphed)
        self.step = functools.partial(train_step, model, optimizer=self.optimizer, objective=self.objective)
        if graphed:
            from .cuda_graphs import GraphedStep

            self.step = GraphedStep(self.step)  # the same step, recorded once and replayed
        self.bar = _progress_bar(config.epochs * self.steps_per_epoch, progress)

    def batches(self) -> Iterator[Any]:
        config = self.config
        batches = self.train_data.batches(config.batch_size, generator=self.generator, binarize=config.binarize,
                                          labels=self.model.conditional)
        return ticking(batches, self.bar)

    def show(self, history: History) -> None:
        if self.bar is not None:
            last = history.last()
            postfix = {"epoch": f"{last['epoch']}/{self.config.epochs}", "train_elbo": f"{last['train_elbo']:.2f}"}
            if last["test_elbo"] is not None:
                postfix["test_elbo"] = f"{last['test_elbo']:.2f}"
            self.bar.set_postfix(postfix)


def default_optimizer(model: nn.Module, lr: float, capturable: bool = False) -> torch.optim.Adam:
    """Adam with the fused kernel where torch has one for the device (one kernel per step instead of
    ~10 small ops per parameter: a 3x faster optimizer step on a CPU); plain Adam otherwise.
    capturable: keep Adam's step count on the device, so a CUDA graph can record the step (CUDA only)."""
    device_type = next(model.parameters()).device.type
    if device_type in ("cpu", "cuda"):
        try:
            extra = {"capturable": True} if capturable and device_type == "cuda" else {}
            return torch.optim.Adam(model.parameters(), lr=lr, fused=True, **extra)
        except (RuntimeError, TypeError, ValueError):  # older torch, or an unsupported dtype
            pass
    return torch.optim.Adam(model.parameters(), lr=lr)


# ------------------------------------------------------------------------------ fit's helpers
def _check_fit_inputs(model, train_data, test_data, config, optimizer) -> None:
    """Refuse, before any training, what would fail after an epoch or silently train nothing."""
    if not isinstance(model, nn.Module) or not all(hasattr(model, m) for m in ("posterior", "log_joint", "config")):
        raise TypeError(f"fit trains a vae_utils model (a VAE, FlowVAE or ConditionalVAE), got "
                        f"{type(model).__name__}; build one with vu.VAE(vu.VAEConfig(...)).")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"fit: config must be a TrainConfig, got {type(config).__name__}; write TrainConfig(epochs=...).")
    for name, data in (("train_data", train_data), ("test_data", test_data)):
        if data is not None or name == "train_data":
            _check_data(name, data, model)
    if optimizer is not None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"fit: optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}.")
        mine = {id(p) for p in model.parameters()}
        if not any(id(p) in mine for group in optimizer.param_groups for p in group["params"]):
            raise ValueError("fit: the optimizer holds none of the model's parameters (was it built for another "
                             "model?); pass torch.optim.Adam(model.parameters()) or leave optimizer=None.")


def _check_data(name: str, data: Any, model: nn.Module) -> None:
    if not isinstance(data, ImageDataset):
        hint = (" (wrap a uint8 image tensor [N, C, H, W] as vu.ImageDataset(images, labels, classes, name))"
                if isinstance(data, Tensor) else "")
        raise TypeError(f"fit: {name} must be an ImageDataset, got {type(data).__name__}{hint}; "
                        "load one with vu.load_dataset(...).")
    if len(data) == 0:
        raise ValueError(f"fit: {name} is empty (0 images); pass a data set with images, or test_data=None.")
    expected = tuple(model.config.image_shape)
    if tuple(data.image_shape) != expected:
        raise ValueError(f"fit: {name} holds images of shape {tuple(data.image_shape)}, but the model was built "
                         f"for image_shape={expected}; use matching data or build VAE(VAEConfig(image_shape=...)).")
    if model.conditional and int(data.labels.max()) >= model.config.num_classes:
        raise ValueError(f"fit: {name} has labels up to {int(data.labels.max())}, but the model was built for "
                         f"num_classes={model.config.num_classes}; build it with "
                         f"num_classes={int(data.labels.max()) + 1}.")


class _FitObjective:
    """What fit maximizes, step by step: the config's objective with the warm-up beta of the current
    step, plus a device-side note of the epoch's first step whose objective is not finite. The step
    count and that note are device tensors changed in place, so a CUDA graph of the step keeps them."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int, device: torch.device):
        self.config = config
        # beta = 1 inside the objective (TrainConfig allows no other with "iw"); a beta or warm-up reweighs
        # the KL outside it, so a compiled objective never sees a changing number.
        objective = iw_objective(config.k) if config.objective == "iw" else _elbo
        self.objective = _compiled(objective) if config.compile else objective
        self.warmup_steps = config.kl_warmup_epochs * steps_per_epoch
        self.beta, self.global_step = config.beta, 0
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def new_epoch(self) -> None:
        self.step.zero_()
        self.first_bad.fill_(-1)

    def __call__(self, model: nn.Module, batch: Any) -> ELBO:
        self.global_step += 1
        if self.warmup_steps > 0:
            self.beta = self.config.beta * min(1.0, self.global_step / self.warmup_steps)
        terms = self.objective(model, batch)
        if self.beta != 1:
            terms = elbo_terms(terms.reconstruction, terms.kl, self.beta)
        with torch.no_grad():  # device-side, in place: no host sync
            self.step.add_(1)
            bad = (self.first_bad < 0) & ~torch.isfinite(terms.objective.sum())
            self.first_bad.copy_(torch.where(bad, self.step, self.first_bad))
        return terms


def _elbo(model: nn.Module, batch: Any) -> ELBO:
    """The one-sample ELBO of a batch, beta = 1 (fit reweighs the KL for a beta or a warm-up)."""
    return estimate_elbo(model, *split_batch(batch))


class _Snapshot:
    """The parameters and Adam moments at the start of an epoch, to return to if the epoch diverges."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer
        self.states = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))

    def restore(self) -> None:
        self.model.load_state_dict(self.states[0])
        self.optimizer.load_state_dict(self.states[1])


def _cuda_graph_applies(config: TrainConfig, device: torch.device, optimizer) -> bool:
    """Whether fit can replay its step from a CUDA graph: on CUDA, with an optimizer that keeps its step
    count on the device, and without a warm-up (whose beta changes every step)."""
    own_optimizer_ok = optimizer is None or optimizer.defaults.get("capturable", False)
    return config.cuda_graph and device.type == "cuda" and own_optimizer_ok and config.kl_warmup_epochs == 0


def _evaluation_set(test_data: ImageDataset | None, config: TrainConfig, device: torch.device):
    if test_data is None:
        return None
    test_data = test_data.to(device)
    return test_data.binarized(EVAL_BINARIZE_SEED) if config.binarize else test_data


def _epoch_means(sums: dict[str, Tensor], run: _FitRun, snapshot: _Snapshot, epoch: int, history: History) -> dict:
    """Read the epoch's sums (the epoch's one host sync); restore the snapshot and raise
    TrainingDivergedError after a step whose loss was not finite."""
    n, total, elbo, reconstruction, kl, bad = torch.stack(
        [*sums.values(), run.objective.first_bad.to(sums["n"].dtype)]).tolist()
    if bad >= 0:
        snapshot.restore()
        raise _diverged(epoch, int(bad), run, snapshot, history)
    return {"train_elbo": elbo / n, "train_reconstruction": reconstruction / n, "train_kl": kl / n,
            "train_objective": total / n}


def _test_terms(model: nn.Module, eval_set: ImageDataset | None, config: TrainConfig) -> dict[str, float | None]:
    if eval_set is None:
        return {"test_elbo": None, "test_reconstruction": None, "test_kl": None}
    test = evaluate_elbo(model, eval_set, batch_size=config.eval_batch_size, binarize_seed=None)
    return {"test_elbo": test["elbo"], "test_reconstruction": test["reconstruction"], "test_kl": test["kl"]}


def _restore_if_diverged(objective: _FitObjective, snapshot: _Snapshot | None) -> None:
    """After an interrupt: never hand back weights from an epoch that already went non-finite."""
    bad = int(objective.first_bad)
    if bad >= 0 and snapshot is not None:
        snapshot.restore()
        warnings.warn(
            f"Training was interrupted in an epoch whose loss had already become NaN or inf (at step {bad}); "
            "the model and optimizer were restored to the end of the previous epoch. Lower the learning "
            "rate or use a KL warm-up before training again.", RuntimeWarning, stacklevel=3)


def _compiled(objective: Callable[[nn.Module, Tensor], ELBO]) -> Callable[[nn.Module, Tensor], ELBO]:
    """``objective`` through ``torch.compile`` (static shapes: an epoch's smaller last batch compiles once
    more), with a clear error where torch cannot compile on this machine."""
    compiled = torch.compile(objective, dynamic=False)

    def run(model: nn.Module, x: Tensor) -> ELBO:
        try:
            return compiled(model, x)
        except Exception as err:  # inductor's errors (no compiler, no Triton) come wrapped in several types
            if not type(err).__module__.startswith("torch._"):
                raise
            raise RuntimeError(
                f"TrainConfig(compile=True): torch.compile could not compile the objective ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). On a CPU it needs a C++ compiler (gcc or clang), "
                "on an NVIDIA GPU the Triton package; install it, or train with compile=False (the default)."
            ) from err

    return run


def _progress_bar(total_batches: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total_batches, desc="training", unit="batch")


def ticking(batches: Iterable[Any], bar, every: int = PROGRESS_EVERY) -> Iterator[Any]:
    """Pass the batches through, advancing ``bar`` (a tqdm bar, or None for none) by a count every
    ``every`` batches: a count only, no host sync. Used by ``fit``."""
    if bar is None:
        yield from batches
        return
    count = 0
    for x in batches:
        yield x
        count += 1
        if count % every == 0:
            bar.update(every)
    bar.update(count % every)


def _diverged(epoch: int, step: int, run: _FitRun, snapshot: _Snapshot, history: History) -> TrainingDivergedError:
    config = run.config
    x_min, x_max = (v / 255 for v in run.train_data.images.aminmax())  # uint8 data: always within [0, 1]
    message = (
        f"Training diverged: the loss became NaN or inf at epoch {epoch}, step {step} "
        f"(of {run.steps_per_epoch} steps per epoch). The model and optimizer were restored to the end "
        f"of epoch {epoch - 1}; they and the history are attached to this error (err.model, "
        f"err.history). Likely fixes: lower the learning rate (lr={config.lr:g}; try {config.lr / 10:g}), "
        f"check the data is in [0, 1] (training images span [{float(x_min):g}, {float(x_max):g}]), "
        "or use a KL warm-up (kl_warmup_epochs)."
    )
    return TrainingDivergedError(message, epoch=epoch, step=step, model=snapshot.model, optimizer=snapshot.optimizer,
                                 history=history)
