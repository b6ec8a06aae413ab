"""Figures for the tutorial: image grids, training curves, latent scatter, manifold and traversals.

Every function draws with pyplot and returns the matplotlib ``Figure``, so a script can ``savefig`` it
and a test can inspect it. In Jupyter the inline backend shows a pyplot figure by itself at the end of
the cell; assign the result (``fig = show_images(x)``) or end the line with ``;`` so it is not shown
twice.

Images are tensors ``[N, C, H, W]`` with values in [0, 1] (what ``VAE.mean_image`` returns); they may
live on any device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["image_grid", "show_images", "plot_history", "LiveLossPlot", "plot_latent_scatter", "latent_grid",
           "plot_latent_manifold", "plot_latent_traversal", "plot_kl_per_dim"]


# ----------------------------------------------------------------------------- image grids
def _as_image_batch(images: torch.Tensor) -> torch.Tensor:
    """Validate and return images as a float CPU tensor [N, C, H, W] clamped to [0, 1]."""
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.dim() == 3:  # [N, H, W]: a batch of single-channel images
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        if images.dim() == 4 and images.shape[-1] in (1, 3):
            fix = "these look like channels-last images [N, H, W, C]: move the channels with x.permute(0, 3, 1, 2)"
        elif images.dim() == 2:
            fix = "these look like flattened images: reshape them, e.g. x.view(-1, 1, 28, 28) for 28x28 grey images"
        else:
            fix = "pass a batch of grey (C = 1) or colour (C = 3) images"
        raise ValueError(f"expected images of shape [N, C, H, W] with C = 1 or 3 (or [N, H, W]), got "
                         f"{tuple(images.shape)}; {fix}")
    scale = 255.0 if images.dtype == torch.uint8 else 1.0  # raw uint8 pixels from ImageDataset.images
    images = images.detach().to("cpu", torch.float32) / scale
    _check_pixel_values(images)
    return images.clamp(0.0, 1.0)


def _check_pixel_values(images: torch.Tensor) -> None:
    """Refuse NaN/inf pixels and whole-number floats above 1 (0..255 pixels not divided by 255).
    Other values are clamped to [0, 1] for display (a Gaussian decoder's means may stray a little)."""
    if images.numel() == 0:
        return
    if not bool(torch.isfinite(images).all()):
        raise ValueError("the images hold NaN or infinite values (a model whose training diverged decodes to NaN); "
                         "find them with torch.isnan(x).nonzero()")
    high = float(images.max())
    if high > 1.0 and bool((images == images.round()).all()):
        raise ValueError(f"the images are whole numbers up to {high:g}: these look like 0..255 pixels; divide by "
                         "255 (x / 255), or pass the uint8 tensor itself")


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile images into one array, row by row.

    images: [N, C, H, W] (or [N, H, W]) in [0, 1]; nrow: images per row (default: about sqrt(N)).
    Returns a numpy array [rows*(H+p)+p, nrow*(W+p)+p] (grey) or [..., ..., 3] (colour).
    """
    images = _as_image_batch(images)
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("image_grid needs at least one image, got an empty batch")
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / nrow)
    grid = torch.full((c, nrows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()


def show_images(images: torch.Tensor, nrow: int | None = None, title: str | None = None, ax: Axes | None = None,
                padding: int = 2, size_per_image: float = 0.8) -> Figure:
    """Show a batch of images as one grid.

    images: [N, C, H, W] (or [N, H, W]) in [0, 1]; nrow: images per row (default about sqrt(N)).
    Returns the Figure; the grid is ``fig.axes[0].images[0]``.
    """
    grid = image_grid(images, nrow=nrow, padding=padding)
    if ax is None:
        n = _as_image_batch(images).shape[0]
        cols = nrow or max(1, math.ceil(math.sqrt(n)))
        rows = math.ceil(n / cols)
        fig, ax = plt.subplots(figsize=(max(2.0, size_per_image * cols), max(1.2, size_per_image * rows + 0.4)))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax.figure


# ----------------------------------------------------------------------------- training curves

_CURVES = (
    ("elbo", "ELBO (nats, higher is better)"),
    ("reconstruction", r"reconstruction  $\mathrm{E}_{q_\phi}[\log p_\theta(x\mid z)]$"),
    ("kl", r"$\mathrm{KL}(q_\phi(z\mid x)\,\|\,p(z))$"),
)


def _history_dict(history: Any) -> Mapping[str, Sequence[float]]:
    """Accept a training.History, its to_dict(), or any object with the same list attributes."""
    if isinstance(history, Mapping):
        return history
    if hasattr(history, "to_dict"):
        return history.to_dict()
    return vars(history)


def _draw_history(fig: Figure, history: Any) -> None:
    h = _history_dict(history)
    fig.clear()
    axes = fig.subplots(1, 3)
    epochs = list(h.get("epoch") or range(1, len(h.get("train_elbo", [])) + 1))
    for ax, (key, label) in zip(axes, _CURVES):
        train, test = list(h.get(f"train_{key}") or []), list(h.get(f"test_{key}") or [])
        if all(v is None for v in test):  # fit without test data stores None
            test = []
        if train:
            ax.plot(epochs[: len(train)], train, "o-", ms=3, label="train")
        if test:
            ax.plot(epochs[: len(test)], test, "s--", ms=3, label="test")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if train or test:
            ax.legend(fontsize=9)
    fig.tight_layout()


def plot_history(history: Any, figsize: tuple[float, float] = (12.0, 3.2)) -> Figure:
    """Curves of ELBO, reconstruction term and KL per epoch, train (solid) vs test (dashed).

    history: a ``training.History`` (or its ``to_dict()``) with lists ``train_elbo``, ``test_elbo``,
    ``train_reconstruction``, ... (nats per example, means over the data set). Returns the Figure
    with three Axes.
    """
    fig = plt.figure(figsize=figsize)
    _draw_history(fig, history)
    return fig


def _in_jupyter() -> bool:
    """True inside a Jupyter kernel (where rich display works), False in a terminal or a script."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class LiveLossPlot:
    """A ``fit(..., callback=LiveLossPlot())`` callback that redraws the loss curves after each epoch.

    In Jupyter it shows one figure and updates it in place (an IPython display handle, so the tqdm
    progress bar in the same cell is left alone). Outside Jupyter it prints one line per epoch, or
    nothing with ``quiet=True``. The last drawn Figure is kept in ``.figure``.
    """

    def __init__(self, figsize: tuple[float, float] = (12.0, 3.2), quiet: bool = False):
        self.figsize = figsize
        self.quiet = quiet
        self.figure: Figure | None = None
        self.calls = 0
        self._handle = None

    def __call__(self, history: Any) -> None:
        self.calls += 1
        if not _in_jupyter():
            if not self.quiet:
                print(self._summary(history), flush=True)
            return
        from IPython.display import display

        if self.figure is None:
            # A Figure not registered with pyplot: the inline backend will not show it a second time.
            self.figure = Figure(figsize=self.figsize)
        _draw_history(self.figure, history)
        if self._handle is None:
            self._handle = display(self.figure, display_id=True)
        else:
            self._handle.update(self.figure)

    @staticmethod
    def _summary(history: Any) -> str:
        h = _history_dict(history)
        epochs = list(h.get("epoch") or [])
        parts = [f"epoch {epochs[-1] if epochs else len(h.get('train_elbo', []))}"]
        for key in ("train_elbo", "test_elbo", "train_kl"):
            values = h.get(key) or []
            if values:
                parts.append(f"{key} {values[-1]:.2f}")
        return ", ".join(parts)


# ----------------------------------------------------------------------------- latent space
def plot_latent_scatter(codes: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str] | None = None,
                        ax: Axes | None = None, point_size: float = 3.0, alpha: float = 0.6) -> Figure:
    """Scatter 2-D latent codes coloured by class, one legend entry per class name.

    codes: [N, 2] (e.g. encoder means); labels: int [N]; class_names: name of class i at index i.
    Returns the Figure; each class is one PathCollection in ``fig.axes[0].collections``.
    """
    codes = torch.as_tensor(codes).detach().to("cpu", torch.float32)
    labels = torch.as_tensor(labels).detach().to("cpu").long()
    if codes.dim() != 2 or codes.shape[1] != 2:
        raise ValueError(f"plot_latent_scatter needs codes of shape [N, 2], got {tuple(codes.shape)}; "
                         "train a model with latent_dim=2 or project the codes to 2-D first")
    if labels.shape != codes.shape[:1]:
        raise ValueError(f"labels must have shape [{codes.shape[0]}] to match the codes, got {tuple(labels.shape)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(7.0, 6.0))
    classes = sorted(labels.unique().tolist())
    cmap = plt.get_cmap("tab10" if max(classes, default=0) < 10 else "tab20")
    for c in classes:
        points = codes[labels == c]
        name = class_names[c] if class_names is not None else str(c)
        ax.scatter(points[:, 0], points[:, 1], s=point_size, alpha=alpha, color=cmap(c % cmap.N), label=name)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.legend(markerscale=4, fontsize=9, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_aspect("equal", adjustable="datalim")
    ax.figure.tight_layout()
    return ax.figure


def latent_grid(grid_size: int = 15, span: float = 3.0, quantiles: bool = True) -> torch.Tensor:
    """Grid values along one latent axis, [grid_size].

    quantiles=True: equally spaced in probability under the prior N(0, 1) between Phi(-span) and
    Phi(span), mapped through the inverse CDF (Kingma & Welling 2013, fig. 4), so each cell covers the
    same prior mass. quantiles=False: equally spaced in [-span, span].
    """
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 2:
        raise ValueError(f"grid_size must be an int of at least 2, got {grid_size!r}")
    if isinstance(span, bool) or not isinstance(span, (int, float)) or not (math.isfinite(span) and span > 0):
        raise ValueError(f"span must be a positive finite number, got {span!r}")
    if quantiles:
        standard = torch.distributions.Normal(0.0, 1.0)
        lo = standard.cdf(torch.tensor(-float(span)))
        u = torch.linspace(float(lo), float(1.0 - lo), grid_size)
        return standard.icdf(u)
    return torch.linspace(-span, span, grid_size)


@torch.no_grad()
def plot_latent_manifold(model: torch.nn.Module, grid_size: int = 15, span: float = 3.0, quantiles: bool = True,
                         dims: tuple[int, int] = (0, 1), base: torch.Tensor | None = None,
                         ax: Axes | None = None) -> Figure:
    """Decode a grid over two latent dimensions and show the images where they sit.

    For a 2-D latent this is the whole learned manifold. With more dimensions, ``dims`` picks the
    two that vary and the others stay at ``base`` ([d], default 0 = the prior mean).
    Columns run along z[dims[0]] (left to right), rows along z[dims[1]] (bottom to top).
    Returns the Figure; its grid image has grid_size x grid_size decoded images.
    """
    d = model.config.latent_dim
    if len(dims) != 2 or not all(0 <= i < d for i in dims) or dims[0] == dims[1]:
        raise ValueError(f"dims must be two different latent indices in [0, {d}), got {dims}")
    values = latent_grid(grid_size, span, quantiles)
    z = torch.zeros(d) if base is None else base.detach().cpu().float().reshape(d)
    z = z.expand(grid_size, grid_size, d).clone()
    rows = values.flip(0)  # top row = largest z[dims[1]]
    z[:, :, dims[0]] = values.view(1, -1)
    z[:, :, dims[1]] = rows.view(-1, 1)
    images = model.mean_image(model.decode(z.view(-1, d).to(model.device)))
    if ax is None:
        _, ax = plt.subplots(figsize=(7.0, 7.0))
    grid = image_grid(images, nrow=grid_size, padding=0)
    h, w = images.shape[-2:]
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    centres_x = np.arange(grid_size) * w + w / 2
    centres_y = np.arange(grid_size) * h + h / 2
    ticks = np.unique(np.linspace(0, grid_size - 1, min(grid_size, 5)).round().astype(int))  # ends included
    ax.set_xticks(centres_x[ticks], [f"{values[i]:.1f}" for i in ticks])
    ax.set_yticks(centres_y[ticks], [f"{rows[i]:.1f}" for i in ticks])
    ax.set_xlabel(f"$z_{{{dims[0] + 1}}}$")
    ax.set_ylabel(f"$z_{{{dims[1] + 1}}}$")
    spacing = "prior quantiles" if quantiles else "evenly spaced"
    ax.set_title(f"decoded {grid_size}x{grid_size} grid ({spacing})", fontsize=10)
    return ax.figure


@torch.no_grad()
def plot_latent_traversal(model: torch.nn.Module, z: torch.Tensor | None = None, dims: Sequence[int] | None = None,
                          values: torch.Tensor | None = None, labels: Sequence[str] | None = None) -> Figure:
    """Vary one latent dimension at a time around ``z`` with the others fixed.

    z: [d] starting code (default 0); dims: dimensions to traverse (rows; default all);
    values: [n] settings for the traversed dimension (columns; default 9 values in [-3, 3]).
    Returns the Figure: one row of n decoded images per dimension.
    """
    d = model.config.latent_dim
    z = torch.zeros(d) if z is None else z.detach().cpu().float().reshape(d)
    dims = list(range(d)) if dims is None else list(dims)
    values = torch.linspace(-3.0, 3.0, 9) if values is None else torch.as_tensor(values).float()
    codes = z.repeat(len(dims), len(values), 1)
    for row, dim in enumerate(dims):
        codes[row, :, dim] = values
    images = model.mean_image(model.decode(codes.view(-1, d).to(model.device)))
    n = len(values)
    fig, ax = plt.subplots(figsize=(0.6 * n + 1.0, 0.6 * len(dims) + 0.6))
    h, w = images.shape[-2:]
    pad = 2
    ax.imshow(image_grid(images, nrow=n, padding=pad), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(pad + np.arange(n) * (w + pad) + w / 2, [f"{v:.1f}" for v in values.tolist()], fontsize=9)
    row_labels = labels if labels is not None else [f"$z_{{{i + 1}}}$" for i in dims]
    ax.set_yticks(pad + np.arange(len(dims)) * (h + pad) + h / 2, row_labels, fontsize=9)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("value of the traversed dimension (others fixed)")
    fig.tight_layout()
    return fig


def plot_kl_per_dim(kl_per_dim: torch.Tensor | Mapping[str, torch.Tensor], threshold: float | None = 0.01,
                    ax: Axes | None = None) -> Figure:
    """Bar chart of the average KL(q(z_j|x) || p(z_j)) per latent dimension j, in nats.

    kl_per_dim: [d] (averaged over data), or a mapping label -> [d] for grouped bars (e.g. one per beta).
    threshold: draw a line where a dimension counts as active (None: no line).
    Returns the Figure.
    """
    series = dict(kl_per_dim) if isinstance(kl_per_dim, Mapping) else {"": kl_per_dim}
    series = {k: torch.as_tensor(v).detach().cpu().float().reshape(-1) for k, v in series.items()}
    d = max(v.numel() for v in series.values())
    if ax is None:
        _, ax = plt.subplots(figsize=(max(5.0, 0.35 * d * max(1, len(series) ** 0.5)), 3.0))
    width = 0.8 / len(series)
    x = np.arange(d)
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x[: values.numel()] + (i - (len(series) - 1) / 2) * width, values.numpy(), width, label=label or None)
    if threshold is not None:
        ax.axhline(threshold, color="k", lw=0.8, ls=":", label=f"active if > {threshold:g} nats")
    ax.set_xticks(x, [str(i + 1) for i in range(d)], fontsize=9)
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("mean KL (nats)")
    if len(series) > 1 or threshold is not None:
        ax.legend(fontsize=9)
    ax.figure.tight_layout()
    return ax.figure
