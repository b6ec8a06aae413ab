"""Interactive widgets: move through a VAE's latent space and watch the decoder's image change.

Both widgets are ipywidgets ``VBox`` subclasses: display them in Jupyter, or drive them from Python
(tests do) through ``.sliders``, ``.update()``, ``.decoded_z`` and ``.image_bytes``.

The decoded image is an ``ipywidgets.Image`` holding PNG bytes made with Pillow, so the browser draws
it directly; one update decodes a single code under ``torch.no_grad`` (about a millisecond for the
default MLP on a CPU). Stable CSS classes let a browser test find the parts:

- ``vae-latent-explorer`` (the whole explorer), ``vae-latent-sliders`` (the box of sliders),
  ``vae-latent-slider`` (every latent slider), ``vae-decoded-image`` (the decoded image);
- ``vae-interpolation-explorer``, ``vae-interpolation-slider`` (alpha) and ``vae-decoded-image``;
- ``theory-figure`` (a ``LiveFigure``'s image) and ``theory-slider`` (every control ``connect_controls`` wires).

``LiveFigure`` and ``connect_controls`` serve the theory notebooks' sliders: a matplotlib figure whose static
parts are drawn once and whose moving artists are redrawn (blitted) into a small PNG on every change, so a
slider step costs a few milliseconds of drawing instead of a whole new figure.
"""

from __future__ import annotations

import io
import math
import numbers

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image as PILImage
from PIL import features as PILFeatures

from .plotting import image_grid
from .validation import check_images

__all__ = ["LiveFigure", "connect_controls", "LatentExplorer", "InterpolationExplorer", "latent_explorer",
           "interpolation_explorer", "class_explorer", "style_explorer", "interpolate_codes", "image_to_png"]


def image_to_png(image: torch.Tensor, scale: int = 6) -> bytes:
    """Encode one image as PNG bytes, enlarged ``scale`` times with nearest-neighbour pixels.

    image: [C, H, W] or [H, W] with values in [0, 1] (C = 1 or 3).
    """
    image = image.detach().to("cpu", torch.float32)
    if image.dim() == 3:
        image = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
    if image.dim() not in (2, 3):
        raise ValueError(f"image_to_png expects one image [C, H, W] or [H, W], got {tuple(image.shape)}")
    if not bool(torch.isfinite(image).all()):
        raise ValueError(
            "image_to_png got NaN or infinite pixels (a model whose training diverged decodes to NaN); "
            "check the model or the image"
        )
    pixels = (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()
    picture = PILImage.fromarray(np.ascontiguousarray(pixels))
    if scale != 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), PILImage.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)  # fast: the widget redraws on every slider step
    return buffer.getvalue()


METHODS = ("linear", "spherical")


def _check_model(model, caller: str) -> None:
    """Refuse anything that is not a VAE-like model, before any widget is built."""
    config = getattr(model, "config", None)
    needs = ("decode", "encode", "mean_image")
    if (
        not isinstance(model, torch.nn.Module)
        or not hasattr(config, "latent_dim")
        or not hasattr(config, "image_shape")
        or not all(callable(getattr(model, name, None)) for name in needs)
    ):
        raise TypeError(
            f"{caller} needs a trained vae_utils VAE (with .config.latent_dim, .config.image_shape, "
            f".encode, .decode and .mean_image), got {type(model).__name__}; e.g. pass result.model "
            "from vu.fit or vu.load_or_train"
        )


def _positive(caller: str, name: str, value, integer: bool = False) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not (math.isfinite(value) and value > 0):
        expected = "a positive int" if integer else "a positive finite number"
        raise ValueError(f"{caller}: {name} must be {expected}, got {value!r}")


def _single_image(model: torch.nn.Module, x, caller: str = "latent_explorer") -> torch.Tensor:
    """Return x as a batch of one image [1, C, H, W] (float32 in [0, 1]) on the model's device.

    x: one image [C, H, W] or [1, C, H, W]: a float tensor in [0, 1], uint8 pixels 0..255 (divided
    by 255 here), or a numpy array or nested list of either.
    """
    expected = tuple(model.config.image_shape)
    try:
        x = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"{caller}: expected one image {list(expected)} as a tensor, got {type(x).__name__} ({err})"
        ) from None
    if tuple(x.shape) == expected:
        x = x.unsqueeze(0)
    if tuple(x.shape) != (1, *expected):
        raise ValueError(
            f"{caller}: expected one image of shape {list(expected)} or [1, {', '.join(map(str, expected))}], got "
            f"{list(x.shape)}; pick one image with data.float_images()[i]"
        )
    if x.dtype == torch.uint8:
        x = x.float() / 255  # raw pixels, e.g. data.images[i]
    elif not x.is_floating_point():
        raise TypeError(
            f"{caller}: expected a float image in [0, 1] or uint8 pixels, got dtype {x.dtype}; "
            "convert 0..255 values with x.float() / 255"
        )
    reference = next(model.parameters())
    x = x.to(reference.device, reference.dtype)
    check_images(x, expected, reference.dtype, reference.device, caller=caller)  # NaN, 0..255 floats, ...
    return x


class _DecodedImage:
    """Decode codes to PNG bytes for an ipywidgets.Image (a conditional model's with label ``y``)."""

    def __init__(self, model: torch.nn.Module, scale: int, y: int | None = None):
        self.model, self.scale, self.y = model, scale, y

    @torch.no_grad()
    def png(self, z: torch.Tensor) -> bytes:
        """z: [d] -> PNG bytes of the decoder's mean image."""
        reference = next(self.model.parameters())
        decoded = self.model.decode(z.to(reference.device, reference.dtype).view(1, -1), self.y)
        return image_to_png(self.model.mean_image(decoded)[0], self.scale)


def _picture(value: bytes, scale: int, image_shape: tuple[int, ...], css_class: str | None = None) -> widgets.Image:
    h, w = image_shape[-2:]
    picture = widgets.Image(value=value, format="png", width=w * scale, height=h * scale)
    if css_class:
        picture.add_class(css_class)
    return picture


def _captioned(picture: widgets.Widget, caption: str) -> widgets.VBox:
    return widgets.VBox([widgets.HTML(f"<b>{caption}</b>"), picture],
                        layout=widgets.Layout(align_items="center", margin="0 8px"))


class LatentExplorer(widgets.VBox):
    """One slider per latent dimension and the decoded image of the code the sliders spell out.

    model: a ``VAE`` (anything with ``config.latent_dim``, ``config.image_shape``, ``decode``,
    ``mean_image``, ``encode``, ``device``). x: optional image [C, H, W] (or [1, C, H, W]); the sliders
    then start at its encoder mean and the input is shown beside the decoded image; otherwise at 0
    (the prior mean). span: sliders run over [-span, span], widened to include the starting code.
    y: a conditional model's label (of x, and of the decoded images; ``class_explorer`` changes it).
    dims: sliders for the first ``dims`` latent dimensions only (None: all); the others stay at the start.

    Attributes: ``sliders`` (list of FloatSlider), ``image`` (ipywidgets.Image), ``start`` ([d], the
    starting code), ``decoded_z`` ([d], the code behind the current image), ``image_bytes``,
    ``updates`` (how many times the image was redrawn).
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor | None = None, span: float = 3.0, step: float = 0.01,
                 scale: int = 6, continuous_update: bool = True, y: int | None = None, dims: int | None = None):
        _check_model(model, "latent_explorer")
        _positive("latent_explorer", "span", span)
        _positive("latent_explorer", "step", step)
        _positive("latent_explorer", "scale", scale, integer=True)
        d = model.config.latent_dim
        self.model = model
        self._decoder = _DecodedImage(model, scale, y)
        if x is None:
            start = torch.zeros(d)
        else:
            with torch.no_grad():
                mu, _ = model.encode(_single_image(model, x, "latent_explorer"), None if y is None else [y])
            start = mu[0].detach().cpu().double()
        self.start = start.float()
        d = d if dims is None else min(dims, d)
        limit = max(span, math.ceil(float(start.abs().max()) * 10) / 10) if d else span
        self.sliders = [widgets.FloatSlider(value=float(start[i]), min=-limit, max=limit, step=step,
                                            description=f"z{i + 1}", continuous_update=continuous_update,
                                            readout_format=".2f", layout=widgets.Layout(width="260px"),
                                            style={"description_width": "32px"}) for i in range(d)]
        for slider in self.sliders:
            slider.add_class("vae-latent-slider")
            slider.observe(self.update, names="value")
        columns = 1 if d <= 10 else 2
        slider_box = widgets.GridBox(self.sliders, layout=widgets.Layout(
            grid_template_columns=f"repeat({columns}, 270px)", grid_gap="0 6px"))
        slider_box.add_class("vae-latent-sliders")
        self.decoded_z = self.values()
        self.image = _picture(self._decoder.png(self.decoded_z), scale, model.config.image_shape, "vae-decoded-image")
        self.updates = 1
        reset = widgets.Button(description="reset" if x is None else "reset to the input's code", icon="undo",
                               layout=widgets.Layout(width="auto"))  # the whole label, not "reset to the in…"
        reset.on_click(lambda _: self.set_values(self.start))
        pictures = [_captioned(self.image, "decoded p(x|z)")]
        if x is not None:
            original = _picture(image_to_png(_single_image(model, x, "latent_explorer")[0], scale), scale, model.config.image_shape)
            pictures.insert(0, _captioned(original, "input x"))
        super().__init__([widgets.HBox([slider_box, widgets.VBox([widgets.HBox(pictures), reset])])])
        self.add_class("vae-latent-explorer")

    def values(self) -> torch.Tensor:
        """The code the sliders show now, [d] (float32); dimensions without a slider keep their start."""
        z = self.start.clone()
        z[: len(self.sliders)] = torch.tensor([s.value for s in self.sliders], dtype=torch.float32)
        return z

    def set_values(self, z: torch.Tensor) -> None:
        """Move every slider to z ([d], or the first values of it) and redraw once."""
        z = torch.as_tensor(z).detach().cpu().flatten()[: len(self.sliders)]
        if z.numel() != len(self.sliders):
            raise ValueError(f"set_values expects a code with {len(self.sliders)} values, got shape {list(z.shape)}")
        if not bool(torch.isfinite(z).all()):
            raise ValueError(f"set_values expects finite values, got {z.tolist()}")
        for slider in self.sliders:
            slider.unobserve(self.update, names="value")
        try:
            for slider, value in zip(self.sliders, z.tolist()):
                slider.value = value
        finally:
            for slider in self.sliders:
                slider.observe(self.update, names="value")
        self.update()

    def update(self, change: dict | None = None) -> bytes:
        """Decode the sliders' code and show it; returns the new PNG bytes. Slider callbacks call this."""
        self.decoded_z = self.values()
        self.image.value = self._decoder.png(self.decoded_z)
        self.updates += 1
        return self.image_bytes

    @property
    def image_bytes(self) -> bytes:
        """PNG bytes of the image shown now."""
        return bytes(self.image.value)


def interpolate_codes(z_a: torch.Tensor, z_b: torch.Tensor, alpha: float | torch.Tensor,
                      method: str = "linear") -> torch.Tensor:
    """Points between codes z_a and z_b ([..., d]) at fraction alpha in [0, 1] (scalar or [n] -> [n, ..., d]).

    "linear": (1 - alpha) z_a + alpha z_b. "spherical" (slerp): along the great circle, keeping the norm
    closer to that of typical prior samples (a straight line passes through low-norm codes the
    prior rarely produces in high dimensions). Both give z_a at alpha = 0 and z_b at alpha = 1.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    z_a, z_b = torch.as_tensor(z_a), torch.as_tensor(z_b)
    if z_a.shape != z_b.shape:
        raise ValueError(f"z_a and z_b must have the same shape, got {list(z_a.shape)} and {list(z_b.shape)}")
    if not z_a.is_floating_point():
        z_a = z_a.float()
    z_b = z_b.to(z_a.device, z_a.dtype)
    t_tensor = torch.as_tensor(alpha, dtype=z_a.dtype, device=z_a.device)
    shape = t_tensor.shape + (1,) * z_a.dim()
    t_tensor = t_tensor.reshape(shape)
    if method == "linear":
        return (1 - t_tensor) * z_a + t_tensor * z_b
    if method == "spherical":
        cos = (z_a * z_b).sum(-1, keepdim=True) / (z_a.norm(dim=-1, keepdim=True) * z_b.norm(dim=-1, keepdim=True)).clamp_min(1e-12)
        omega = torch.arccos(cos.clamp(-1.0, 1.0))
        sin = torch.sin(omega)
        if bool((sin.abs() < 1e-6).any()):  # (anti)parallel codes: the great circle is not defined
            return (1 - t_tensor) * z_a + t_tensor * z_b
        return (torch.sin((1 - t_tensor) * omega) * z_a + torch.sin(t_tensor * omega) * z_b) / sin


class InterpolationExplorer(widgets.VBox):
    """A slider alpha in [0, 1] moving between the codes (encoder means) of two images x_a and x_b.

    Shows x_a, the decoded image at z(alpha) and x_b side by side; a toggle switches between linear and
    spherical interpolation. Attributes: ``slider``, ``method`` (ToggleButtons), ``image``,
    ``z_a``/``z_b`` ([d]), ``decoded_z`` ([d]), ``image_bytes``, ``update()``.
    """

    def __init__(self, model: torch.nn.Module, x_a: torch.Tensor, x_b: torch.Tensor, method: str = "linear",
                 scale: int = 6, steps: int = 100, continuous_update: bool = True):
        _check_model(model, "interpolation_explorer")
        if method not in METHODS:
            raise ValueError(f"interpolation_explorer: method must be one of {METHODS}, got {method!r}")
        _positive("interpolation_explorer", "scale", scale, integer=True)
        _positive("interpolation_explorer", "steps", steps, integer=True)
        self.model = model
        self._decoder = _DecodedImage(model, scale)
        a, b = (_single_image(model, x, "interpolation_explorer") for x in (x_a, x_b))
        with torch.no_grad():
            mu_a, _ = model.encode(a)
            mu_b, _ = model.encode(b)
        self.z_a, self.z_b = mu_a[0].detach().cpu().float(), mu_b[0].detach().cpu().float()
        self.slider = widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=1.0 / steps, description="α",
                                          continuous_update=continuous_update, readout_format=".2f",
                                          layout=widgets.Layout(width="420px"))
        self.slider.add_class("vae-interpolation-slider")
        self.method = widgets.ToggleButtons(options=["linear", "spherical"], value=method, description="path")
        self.decoded_z = self.code()
        self.image = _picture(self._decoder.png(self.decoded_z), scale, model.config.image_shape, "vae-decoded-image")
        self.slider.observe(self.update, names="value")
        self.method.observe(self.update, names="value")
        shape = model.config.image_shape
        row = widgets.HBox([
            _captioned(_picture(image_to_png(a[0].cpu(), scale), scale, shape), "x_a (α = 0)"),
            _captioned(self.image, "decoded z(α)"),
            _captioned(_picture(image_to_png(b[0].cpu(), scale), scale, shape), "x_b (α = 1)"),
        ])
        super().__init__([row, self.slider, self.method])
        self.add_class("vae-interpolation-explorer")

    def code(self) -> torch.Tensor:
        """The code at the slider's alpha, [d]."""
        return interpolate_codes(self.z_a, self.z_b, float(self.slider.value), self.method.value)

    def update(self, change: dict | None = None) -> bytes:
        """Decode z(alpha) and show it; returns the new PNG bytes."""
        self.decoded_z = self.code()
        self.image.value = self._decoder.png(self.decoded_z)
        return self.image_bytes

    @property
    def image_bytes(self) -> bytes:
        """PNG bytes of the image shown now."""
        return bytes(self.image.value)


def latent_explorer(model: torch.nn.Module, x: torch.Tensor | None = None, span: float = 3.0, **kwargs) -> LatentExplorer:
    """The latent-slider explorer (see ``LatentExplorer``): one slider per latent dimension.

    x: optional image [C, H, W]; the sliders start at its encoder mean (else at 0).
    """
    return LatentExplorer(model, x=x, span=span, **kwargs)


def interpolation_explorer(model: torch.nn.Module, x_a: torch.Tensor, x_b: torch.Tensor, method: str = "linear",
                           **kwargs) -> InterpolationExplorer:
    """Slide alpha from 0 to 1 between the codes of images x_a and x_b (see ``InterpolationExplorer``)."""
    return InterpolationExplorer(model, x_a, x_b, method=method, **kwargs)


def class_explorer(model: torch.nn.Module, classes: list[str] | None = None, dims: int = 5, span: float = 3.0,
                   scale: int = 6) -> LatentExplorer:
    """A conditional VAE's ``LatentExplorer`` with class buttons (ToggleButtons) above its sliders: the
    decoded mean image of p_θ(x|z, y) for the chosen class y and the code of the first ``dims`` sliders (the
    other dimensions stay 0). Works with ipywidgets 7 and 8. The explorer gets a ``buttons`` attribute."""
    classes = classes or [str(k) for k in range(model.config.num_classes)]
    explorer = LatentExplorer(model, span=span, scale=scale, step=0.05, y=0, dims=dims)
    buttons = widgets.ToggleButtons(options=[(name, k) for k, name in enumerate(classes)], value=0,
                                    style={"button_width": "80px"})

    def pick(change: dict) -> None:
        explorer._decoder.y = change["new"]
        explorer.update()

    buttons.observe(pick, names="value")
    explorer.children, explorer.buttons = (buttons, *explorer.children), buttons
    return explorer


def style_explorer(model: torch.nn.Module, x: torch.Tensor, y, classes: list[str] | None = None,
                   scale: int = 3) -> widgets.VBox:
    """Pick one of the images x [B, C, H, W] (labels y [B]) with a Dropdown; shows it and its code (the
    posterior mean of q_φ(z|x, y)) decoded with each label (``vu.conditional.style_transfer``).
    Returns a VBox with attributes ``picker``, ``image`` and ``update()``."""
    from .conditional import style_transfer

    classes = classes or [str(k) for k in range(model.config.num_classes)]
    rows = style_transfer(model, x, y).cpu()  # [B, num_classes, C, H, W]
    labels = torch.as_tensor(y).tolist()
    picker = widgets.Dropdown(options=[(f"test image {i} ({classes[c]})", i) for i, c in enumerate(labels)],
                              value=0, description="image")
    image, caption = widgets.Image(format="png"), widgets.HTML("input, gap, then decoded as: " + ", ".join(classes))

    def update(_=None):
        i = picker.value
        row = torch.cat([x[i : i + 1].cpu(), torch.ones_like(x[i : i + 1].cpu()), rows[i]])  # [2 + classes, C, H, W]
        image.value = image_to_png(torch.from_numpy(image_grid(row, nrow=len(row), padding=1)), scale)

    picker.observe(update, names="value")
    update()
    box = widgets.VBox([picker, image, caption])
    box.picker, box.image, box.update = picker, image, update
    return box


class LiveFigure:
    """A matplotlib figure shown in an ``ipywidgets.Image`` that redraws only what moves.

    fig: a ``matplotlib.figure.Figure`` (not shown by pyplot: ``.image`` shows it); moving: the artists that
    change (lines, collections, texts), updated by the caller before each ``redraw()``. The static parts
    are drawn once; ``redraw()`` pastes that background, draws the moving artists on top (blitting) and
    sends the browser the pixels as lossless WebP (PNG where Pillow lacks WebP: the same pixels), so a
    redraw costs milliseconds where a new figure costs hundreds.
    """

    def __init__(self, fig, moving):
        if not moving:
            raise ValueError("LiveFigure needs the artists that move (e.g. the Line2D objects a slider changes).")
        self.fig, self.moving, self.canvas = fig, list(moving), FigureCanvasAgg(fig)
        for artist in self.moving:
            artist.set_animated(True)  # left out of the background
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(fig.bbox)
        self.format = "webp" if PILFeatures.check("webp") else "png"
        self.image = widgets.Image(format=self.format)
        self.image.add_class("theory-figure")

    def redraw(self) -> bytes:
        """Draw the moving artists over the background and show the result; returns the encoded image
        (``self.format``: "webp", or "png" without WebP support in Pillow)."""
        self.canvas.restore_region(self.background)
        for artist in self.moving:
            self.fig.draw_artist(artist)
        pixels = PILImage.frombuffer("RGBA", self.canvas.get_width_height(), self.canvas.buffer_rgba())
        buffer = io.BytesIO()
        if self.format == "webp":
            pixels.save(buffer, format="webp", lossless=True, method=0, quality=0)  # fastest lossless setting
        else:
            pixels.save(buffer, format="png", compress_level=1)  # fast to encode; a few tens of kB
        encoded = buffer.getvalue()
        self.image.value = encoded
        return encoded


def connect_controls(live: LiveFigure, move, **controls: widgets.ValueWidget) -> widgets.HBox:
    """Wire controls to a ``LiveFigure``: on every change, ``move(**values)`` then ``live.redraw()``.

    move: a function taking one keyword per control (its ``.value``) that updates ``live.moving``.
    controls: e.g. ``mu=FloatSlider(...), sigma=FloatSlider(...)``. Draws once now. Returns the widget
    to display: the controls in a column beside the figure.
    """
    if not isinstance(live, LiveFigure):
        raise TypeError(f"connect_controls needs a LiveFigure, got {type(live).__name__}.")
    if not controls:
        raise ValueError("connect_controls needs at least one control, e.g. z=widgets.FloatSlider(...).")

    def on_change(change=None):
        move(**{name: control.value for name, control in controls.items()})
        live.redraw()

    for control in controls.values():
        control.add_class("theory-slider")
        control.observe(on_change, names="value")
    on_change()
    return widgets.HBox([widgets.VBox(list(controls.values())), live.image])
