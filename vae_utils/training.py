"""Training a VAE: ``train_epoch`` (the plain loop) and ``fit`` (the loop with history, KL warm-up,
a snapshot against NaN, clean interrupts and a progress bar).

``train_epoch`` is the loop a reader writes by hand; ``fit`` wraps it. Neither waits for the device
inside an epoch: the sums of the objective, ELBO, reconstruction and KL and a record of the first
non-finite loss stay device tensors and are read once per epoch, so on a GPU the host queues batches
ahead while the device computes (no per-batch ``.item()``).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .data import ImageDataset
from .device import pick_device, seed_everything
from .evaluation import EVAL_BINARIZE_SEED, evaluate_elbo
from .objectives import ELBO, elbo_objective, elbo_terms, iw_objective, vae_elbo

__all__ = [
    "TrainConfig",
    "History",
    "FitResult",
    "TrainingDivergedError",
    "train_epoch",
    "fit",
    "default_optimizer",
    "ticking",
]

OBJECTIVES = ("elbo", "iw")
PROGRESS_EVERY = 20  # the progress bar advances every this many batches (a count only: no host sync)


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
        _check_int("epochs", self.epochs, 0, "epochs=10")
        _check_int("batch_size", self.batch_size, 1, "batch_size=128")
        _check_int("eval_batch_size", self.eval_batch_size, 1, "eval_batch_size=1000")
        _check_int("seed", self.seed, None, "seed=0")
        _check_int("k", self.k, 1, "k=5")
        self.lr = _check_number("lr", self.lr, "> 0", "lr=1e-3")
        self.beta = _check_number("beta", self.beta, ">= 0", "beta=1.0")
        self.kl_warmup_epochs = _check_number("kl_warmup_epochs", self.kl_warmup_epochs, ">= 0", "kl_warmup_epochs=2")
        for flag in ("binarize", "cuda_graph", "compile"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"TrainConfig.{flag} must be True or False, got {getattr(self, flag)!r}; "
                                 f"write {flag}=False (without quotes).")
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
        """Inverse of to_dict; fields added since (objective, k, cuda_graph, compile) take their defaults."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"Unknown TrainConfig field(s) {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**values)


def _check_int(name: str, value: Any, minimum: int | None, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"TrainConfig.{name} must be an int{bound}, got {value!r} ({type(value).__name__}); "
                         f"write e.g. {example}.")


def _check_number(name: str, value: Any, bound: str, example: str) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > 0 if bound == "> 0" else value >= 0)
    if not ok:
        hint = " (a number, not a string: no quotes)" if isinstance(value, str) else ""
        raise ValueError(f"TrainConfig.{name} must be a finite number {bound}, got {value!r}{hint}; "
                         f"write e.g. {example}.")
    return float(value)


_HISTORY_KEYS = (
    "epoch",
    "train_elbo",
    "train_reconstruction",
    "train_kl",
    "train_objective",
    "test_elbo",
    "test_reconstruction",
    "test_kl",
    "beta",
    "seconds",
)
_OPTIONAL_KEYS = ("train_objective",)  # absent from histories saved before it existed: filled with None


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
        """Add one epoch; ``values`` must name every field (``train_objective`` may be left out)."""
        missing = set(_HISTORY_KEYS) - set(values) - set(_OPTIONAL_KEYS)
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
        n = len(values.get("epoch", []))
        values = {key: values.get(key, [None] * n if key in _OPTIONAL_KEYS else []) for key in _HISTORY_KEYS}
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


def train_epoch(model: nn.Module, batches: Iterable[Tensor], optimizer: torch.optim.Optimizer,
                objective: Callable[[nn.Module, Tensor], ELBO] | None = None) -> dict[str, Tensor]:
    """One pass of the plain loop: per batch ``x: [B, C, H, W]`` in [0, 1], one step on the loss
    ``-objective(model, x).objective.mean()`` (nats per example). objective: ``(model, x) -> ELBO`` with
    [B] terms, default ``objectives.elbo_objective()``. Returns sums over the examples, 0-d tensors
    on the model's device (read them after the epoch: nothing here waits for the device), keyed
    ``n``, ``objective`` (its objective field), ``elbo`` (reconstruction - KL), ``reconstruction``, ``kl``."""
    objective = objective or elbo_objective()
    model.train()
    sums = torch.zeros(len(SUM_KEYS), device=next(model.parameters()).device)
    for x in batches:
        terms = objective(model, x)
        loss = -terms.objective.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            r, kl = terms.reconstruction.sum(), terms.kl.sum()
            sums += torch.stack((torch.ones_like(terms.objective).sum(), terms.objective.sum(), r - kl, r, kl))
    return dict(zip(SUM_KEYS, sums.unbind()))


def fit(
    model: nn.Module,
    train_data: ImageDataset,
    test_data: ImageDataset | None = None,
    config: TrainConfig | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    callback: Callable[[History], None] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``model`` (a VAE): ``config.epochs`` calls of ``train_epoch``, with a History.

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
    history, run, interrupted = History(), None, False
    try:
        run = _Run(model, train_data, test_data, config, optimizer, progress)
        for epoch in range(1, config.epochs + 1):
            start = time.perf_counter()
            run.start_epoch()
            sums = run.train_epoch()
            train = run.end_epoch(sums, epoch, history)  # the epoch's one host sync
            history.append(epoch=epoch, **train, **run.evaluate(), beta=run.objective.beta,
                           seconds=time.perf_counter() - start)
            run.show(history)
            if callback is not None:
                callback(history)
    except KeyboardInterrupt:
        interrupted = True
        if run is not None:
            run.restore_if_diverged()
    finally:
        if run is not None:
            run.close()
    model.eval()
    return FitResult(model, history, run.optimizer if run else optimizer or default_optimizer(model, config.lr),
                     interrupted)


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
    if not isinstance(model, nn.Module) or not all(hasattr(model, m) for m in ("encode", "decode", "log_likelihood")):
        raise TypeError(f"fit trains a VAE (an nn.Module with encode, decode and log_likelihood), got "
                        f"{type(model).__name__}; build one with vu.VAE(vu.VAEConfig(...)).")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"fit: config must be a TrainConfig, got {type(config).__name__}; write TrainConfig(epochs=...).")
    expected = getattr(getattr(model, "config", None), "image_shape", None)
    for name, data in (("train_data", train_data), ("test_data", test_data)):
        if data is None and name == "test_data":
            continue
        if not isinstance(data, ImageDataset):
            hint = (" (wrap a uint8 image tensor [N, C, H, W] as vu.ImageDataset(images, labels, classes, name))"
                    if isinstance(data, Tensor) else "")
            raise TypeError(f"fit: {name} must be an ImageDataset, got {type(data).__name__}{hint}; "
                            "load one with vu.load_dataset(...).")
        if len(data) == 0:
            raise ValueError(f"fit: {name} is empty (0 images); pass a data set with images, or test_data=None.")
        if expected is not None and tuple(data.image_shape) != tuple(expected):
            raise ValueError(f"fit: {name} holds images of shape {tuple(data.image_shape)}, but the model was built "
                             f"for image_shape={tuple(expected)}; use matching data or build VAE(VAEConfig(image_shape=...)).")
    if optimizer is not None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"fit: optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}.")
        mine = {id(p) for p in model.parameters()}
        if not any(id(p) in mine for group in optimizer.param_groups for p in group["params"]):
            raise ValueError("fit: the optimizer holds none of the model's parameters (was it built for another "
                             "model?); pass torch.optim.Adam(model.parameters()) or leave optimizer=None.")


class _FitObjective:
    """What fit maximizes, step by step: the config's objective with the warm-up beta of the current
    step, plus a device-side note of the epoch's first step whose objective is not finite. The step
    count and that note are device tensors changed in place, so a CUDA graph of the step keeps them."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int, device: torch.device):
        self.config = config
        # beta = 1 inside the objective (TrainConfig allows no other with "iw"); a beta or warm-up reweighs
        # the KL outside it, so a compiled objective never sees a changing number.
        objective = iw_objective(config.k) if config.objective == "iw" else vae_elbo
        self.objective = _compiled(objective) if config.compile else objective
        self.warmup_steps = config.kl_warmup_epochs * steps_per_epoch
        self.beta, self.global_step = config.beta, 0
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def new_epoch(self) -> None:
        self.step.zero_()
        self.first_bad.fill_(-1)

    def __call__(self, model: nn.Module, x: Tensor) -> ELBO:
        self.global_step += 1
        if self.warmup_steps > 0:
            self.beta = self.config.beta * min(1.0, self.global_step / self.warmup_steps)
        terms = self.objective(model, x)
        if self.beta != 1:
            terms = elbo_terms(terms.reconstruction, terms.kl, self.beta)
        with torch.no_grad():  # device-side, in place: no host sync
            self.step.add_(1)
            bad = (self.first_bad < 0) & ~torch.isfinite(terms.objective.sum())
            self.first_bad.copy_(torch.where(bad, self.step, self.first_bad))
        return terms


class _Run:
    """fit's state between epochs: device, data, optimizer, objective, snapshot and progress bar."""

    def __init__(self, model, train_data, test_data, config, optimizer, progress):
        self.model, self.config = model, config
        device = pick_device(config.device)
        seed_everything(config.seed)
        self.generator = torch.Generator(device=device).manual_seed(config.seed)  # batch order, binarization
        model.to(device)
        self.train_data = train_data.to(device)
        self.graphed = _graphed_steps(model, config, optimizer, device, self._step)
        self.optimizer = (default_optimizer(model, config.lr, capturable=self.graphed is not None)
                          if optimizer is None else optimizer)
        self.eval_set = None
        if test_data is not None:
            test_data = test_data.to(device)
            self.eval_set = test_data.binarized(EVAL_BINARIZE_SEED) if config.binarize else test_data
        self.steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
        self.objective = _FitObjective(config, self.steps_per_epoch, device)
        self.snapshot = None
        self.bar = _progress_bar(config.epochs * self.steps_per_epoch, progress)

    def start_epoch(self) -> None:
        """A cheap snapshot (parameters and Adam moments) to return to if this epoch diverges."""
        self.snapshot = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict()))
        self.objective.new_epoch()

    def train_epoch(self) -> dict[str, Tensor]:
        """One epoch: ``train_epoch`` itself, or its steps replayed from a CUDA graph."""
        if self.graphed is None:
            return train_epoch(self.model, self.batches(), self.optimizer, self.objective)
        self.model.train()
        return dict(zip(SUM_KEYS, self.graphed.epoch(self.batches()).unbind()))

    def _step(self, x: Tensor) -> Tensor:
        """One step of ``train_epoch`` on x, its sums stacked: [len(SUM_KEYS)]."""
        return torch.stack(list(train_epoch(self.model, [x], self.optimizer, self.objective).values()))

    def batches(self) -> Iterator[Tensor]:
        config = self.config
        batches = self.train_data.batches(config.batch_size, generator=self.generator, binarize=config.binarize)
        return ticking(batches, self.bar)

    def end_epoch(self, sums: dict[str, Tensor], epoch: int, history: History) -> dict[str, float]:
        """Read the epoch's sums (one host sync); raise TrainingDivergedError after a bad step."""
        n, objective, elbo, reconstruction, kl, bad = torch.stack(
            [*sums.values(), self.objective.first_bad.to(sums["n"].dtype)]).tolist()
        if bad >= 0:
            self._restore()
            raise _diverged(epoch, int(bad), self.steps_per_epoch, self.config, self.train_data,
                            self.model, self.optimizer, history)
        return {"train_elbo": elbo / n, "train_reconstruction": reconstruction / n, "train_kl": kl / n,
                "train_objective": objective / n}

    def evaluate(self) -> dict[str, float | None]:
        if self.eval_set is None:
            return {"test_elbo": None, "test_reconstruction": None, "test_kl": None}
        test = evaluate_elbo(self.model, self.eval_set, batch_size=self.config.eval_batch_size, binarize_seed=None)
        return {"test_elbo": test["elbo"], "test_reconstruction": test["reconstruction"], "test_kl": test["kl"]}

    def show(self, history: History) -> None:
        if self.bar is not None:
            last = history.last()
            postfix = {"epoch": f"{last['epoch']}/{self.config.epochs}", "train_elbo": f"{last['train_elbo']:.2f}"}
            if last["test_elbo"] is not None:
                postfix["test_elbo"] = f"{last['test_elbo']:.2f}"
            self.bar.set_postfix(postfix)

    def restore_if_diverged(self) -> None:
        """After an interrupt: never hand back weights from an epoch that already went non-finite."""
        bad = int(self.objective.first_bad)
        if bad >= 0 and self.snapshot is not None:
            self._restore()
            warnings.warn(
                f"Training was interrupted in an epoch whose loss had already become NaN or inf (at step {bad}); "
                "the model and optimizer were restored to the end of the previous epoch. Lower the learning "
                "rate or use a KL warm-up before training again.", RuntimeWarning, stacklevel=3)

    def _restore(self) -> None:
        self.model.load_state_dict(self.snapshot[0])
        self.optimizer.load_state_dict(self.snapshot[1])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _graphed_steps(model, config, optimizer, device, step):
    """A ``GraphedSteps`` for fit's step where a CUDA graph can replay it, else None."""
    own_optimizer_ok = optimizer is None or optimizer.defaults.get("capturable", False)
    if not (config.cuda_graph and device.type == "cuda" and own_optimizer_ok and config.kl_warmup_epochs == 0):
        return None
    from .cuda_graphs import GraphedSteps

    return GraphedSteps(step)


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
    ``every`` batches: a count only, no host sync. Used by ``fit`` and by the flow and conditional loops."""
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


def _diverged(epoch, step, steps_per_epoch, config, train_data, model, optimizer, history):
    x_min, x_max = (v / 255 for v in train_data.images.aminmax())  # uint8 data: always within [0, 1]
    message = (
        f"Training diverged: the loss became NaN or inf at epoch {epoch}, step {step} "
        f"(of {steps_per_epoch} steps per epoch). The model and optimizer were restored to the end "
        f"of epoch {epoch - 1}; they and the history are attached to this error (err.model, "
        f"err.history). Likely fixes: lower the learning rate (lr={config.lr:g}; try {config.lr / 10:g}), "
        f"check the data is in [0, 1] (training images span [{float(x_min):g}, {float(x_max):g}]), "
        "or use a KL warm-up (kl_warmup_epochs)."
    )
    return TrainingDivergedError(message, epoch=epoch, step=step, model=model, optimizer=optimizer, history=history)
