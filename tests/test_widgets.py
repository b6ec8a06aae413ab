"""Widgets: sliders spell out the decoded code; endpoints of the interpolation decode the endpoint codes."""

import numpy as np
import ipywidgets as widgets
import pytest
import torch

from vae_utils.model import VAE, VAEConfig
from vae_utils.widgets import (
    InterpolationExplorer,
    LatentExplorer,
    image_to_png,
    interpolate_codes,
    interpolation_explorer,
    latent_explorer,
)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return VAE(VAEConfig(latent_dim=5, hidden_dims=(32,))).eval()


@pytest.fixture
def images():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(2, 1, 28, 28, generator=generator)


def _png_of(model, z):
    with torch.no_grad():
        return image_to_png(model.mean_image(model.decode(z.view(1, -1)))[0])


def test_explorer_starts_at_the_encoder_mean_of_x(model, images):
    explorer = latent_explorer(model, images[0])
    assert isinstance(explorer, LatentExplorer)
    assert len(explorer.sliders) == model.config.latent_dim
    with torch.no_grad():
        mu, _ = model.encode(images[:1])
    assert torch.equal(explorer.values(), mu[0])
    assert explorer.image_bytes == _png_of(model, mu[0])


def test_explorer_without_x_starts_at_the_prior_mean(model):
    explorer = latent_explorer(model)
    assert torch.equal(explorer.values(), torch.zeros(5))
    assert explorer.image_bytes == _png_of(model, torch.zeros(5))


def test_moving_a_slider_redraws_the_decoded_code(model, images):
    explorer = latent_explorer(model, images[0])
    before, updates = explorer.image_bytes, explorer.updates
    explorer.sliders[2].value = 2.5  # what a drag in the browser does
    assert explorer.updates == updates + 1
    assert explorer.image_bytes != before
    assert explorer.decoded_z[2] == pytest.approx(2.5)
    assert torch.equal(explorer.decoded_z, explorer.values())
    assert explorer.image_bytes == _png_of(model, explorer.values())


def test_set_values_moves_every_slider_and_redraws_once(model):
    explorer = latent_explorer(model)
    updates = explorer.updates
    target = torch.tensor([0.5, -1.0, 1.5, 0.0, -2.0])
    explorer.set_values(target)
    assert explorer.updates == updates + 1
    assert torch.equal(explorer.decoded_z, target)
    assert explorer.image_bytes == _png_of(model, target)


def test_slider_range_widens_to_include_the_starting_code(model, images):
    explorer = LatentExplorer(model, images[0], span=0.01)
    with torch.no_grad():
        mu, _ = model.encode(images[:1])
    assert torch.equal(explorer.values(), mu[0])  # not clipped to [-0.01, 0.01]
    assert all(s.min <= -mu.abs().max() and s.max >= mu.abs().max() for s in explorer.sliders)


def test_widgets_carry_stable_css_classes_for_browser_tests(model, images):
    explorer = latent_explorer(model, images[0])
    assert "vae-latent-explorer" in explorer._dom_classes
    assert all("vae-latent-slider" in s._dom_classes for s in explorer.sliders)
    assert "vae-decoded-image" in explorer.image._dom_classes
    assert explorer.image.format == "png" and explorer.image_bytes.startswith(b"\x89PNG")


def test_explorer_rejects_a_flat_image_with_the_fix(model):
    with pytest.raises(ValueError, match="expected one image of shape"):
        latent_explorer(model, torch.rand(784))


@pytest.mark.parametrize("method", ["linear", "spherical"])
def test_interpolation_endpoints_decode_the_endpoint_codes(model, images, method):
    widget = interpolation_explorer(model, images[0], images[1], method=method)
    assert isinstance(widget, InterpolationExplorer)
    with torch.no_grad():
        mu, _ = model.encode(images)
    assert torch.allclose(widget.decoded_z, mu[0], atol=1e-6)
    assert widget.image_bytes == _png_of(model, widget.decoded_z)
    widget.slider.value = 1.0
    assert torch.allclose(widget.decoded_z, mu[1], atol=1e-6)
    assert widget.image_bytes == _png_of(model, widget.decoded_z)


def test_interpolation_midpoint_and_method_toggle(model, images):
    widget = interpolation_explorer(model, images[0], images[1])
    widget.slider.value = 0.5
    assert torch.allclose(widget.decoded_z, (widget.z_a + widget.z_b) / 2, atol=1e-6)
    widget.method.value = "spherical"
    assert torch.allclose(widget.decoded_z, interpolate_codes(widget.z_a, widget.z_b, 0.5, "spherical"))


def test_spherical_interpolation_keeps_the_norm_of_equal_norm_codes():
    z_a, z_b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    path = interpolate_codes(z_a, z_b, torch.linspace(0, 1, 11), "spherical")
    assert path.shape == (11, 2)
    torch.testing.assert_close(path.norm(dim=-1), torch.full((11,), 3.0))
    torch.testing.assert_close(path[[0, -1]], torch.stack([z_a, z_b]))
    linear = interpolate_codes(z_a, z_b, torch.linspace(0, 1, 11), "linear")
    assert linear[5].norm() < 3.0
    with pytest.raises(ValueError, match="linear"):
        interpolate_codes(z_a, z_b, 0.5, "cubic")


def test_image_to_png_refuses_nan_pixels():
    with pytest.raises(ValueError, match="NaN or infinite"):
        image_to_png(torch.full((1, 28, 28), float("nan")))


def test_set_values_refuses_a_code_of_the_wrong_size_or_nan(model):
    explorer = latent_explorer(model)
    with pytest.raises(ValueError, match="5 values"):
        explorer.set_values(torch.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        explorer.set_values(torch.full((5,), float("nan")))
    assert explorer.values().tolist() == [0.0] * 5  # nothing moved


def _live_line_figure():
    import matplotlib.figure

    fig = matplotlib.figure.Figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey")  # static
    (line,) = ax.plot([0, 1], [0, 0], color="red")  # moves
    ax.set_ylim(-1, 1)
    return fig, line


def test_live_figure_redraws_only_the_moving_artist_and_the_picture_changes():
    from vae_utils.widgets import LiveFigure, connect_controls

    fig, line = _live_line_figure()
    live = LiveFigure(fig, [line])
    slider = widgets.FloatSlider(value=0.0, min=-1, max=1, step=0.1)
    panel = connect_controls(live, lambda height: line.set_ydata([height, height]), height=slider)
    first = bytes(live.image.value)
    assert live.format == live.image.format == "webp" and first[:4] == b"RIFF" and first[8:12] == b"WEBP"
    assert "theory-slider" in slider._dom_classes
    slider.value = 0.5
    assert bytes(live.image.value) != first
    slider.value = 0.0
    assert bytes(live.image.value) == first  # same state, same pixels: the background was kept, not redrawn over
    assert isinstance(panel, widgets.HBox) and live.image in panel.children


@pytest.mark.parametrize("webp", [True, False])
def test_live_figure_sends_the_canvas_pixels_losslessly(monkeypatch, webp):
    import io

    from PIL import Image

    from vae_utils import widgets as vu_widgets

    monkeypatch.setattr(vu_widgets.PILFeatures, "check", lambda feature: webp)  # False: a Pillow without WebP
    fig, line = _live_line_figure()
    live = vu_widgets.LiveFigure(fig, [line])
    line.set_ydata([0.3, -0.2])
    encoded = live.redraw()
    assert live.image.format == ("webp" if webp else "png")
    shown = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGBA"))
    assert np.array_equal(shown, np.asarray(live.canvas.buffer_rgba()))  # the same pixels, not an approximation


def test_live_figure_and_connect_controls_refuse_what_they_cannot_use():
    from vae_utils.widgets import LiveFigure, connect_controls

    fig, line = _live_line_figure()
    with pytest.raises(ValueError, match="artists that move"):
        LiveFigure(fig, [])
    with pytest.raises(TypeError, match="needs a LiveFigure"):
        connect_controls(fig, lambda: None, z=widgets.FloatSlider())
    with pytest.raises(ValueError, match="at least one control"):
        connect_controls(LiveFigure(fig, [line]), lambda: None)
