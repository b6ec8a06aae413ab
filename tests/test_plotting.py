"""Plotting: figures hold the images, curves and points they claim to show (Agg backend, no display)."""

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from vae_utils.model import VAE, VAEConfig  # noqa: E402
from vae_utils.plotting import (  # noqa: E402
    LiveLossPlot,
    image_grid,
    latent_grid,
    plot_history,
    plot_kl_per_dim,
    plot_latent_manifold,
    plot_latent_scatter,
    plot_latent_traversal,
    show_images,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def model_2d():
    torch.manual_seed(0)
    return VAE(VAEConfig(latent_dim=2, hidden_dims=(32,))).eval()


def test_show_images_tiles_every_image_in_place():
    images = torch.rand(10, 1, 28, 28)
    fig = show_images(images, nrow=5, title="ten")
    grid = fig.axes[0].images[0].get_array()
    pad = 2
    assert grid.shape == (2 * (28 + pad) + pad, 5 * (28 + pad) + pad)
    for i in range(10):
        row, col = divmod(i, 5)
        top, left = pad + row * (28 + pad), pad + col * (28 + pad)
        np.testing.assert_allclose(grid[top : top + 28, left : left + 28], images[i, 0].numpy(), atol=1e-6)
    assert fig.axes[0].get_title() == "ten"


def test_show_images_accepts_uint8_and_draws_into_given_axes():
    images = torch.full((3, 1, 28, 28), 255, dtype=torch.uint8)
    fig, ax = plt.subplots()
    assert show_images(images, ax=ax) is fig
    assert np.asarray(ax.images[0].get_array()).max() == pytest.approx(1.0)


def test_show_images_rejects_flat_images_with_the_fix():
    with pytest.raises(ValueError, match=r"view\(-1, 1, 28, 28\)"):
        show_images(torch.rand(4, 784))


def test_image_grid_colour_images_keep_channels_last():
    assert image_grid(torch.rand(4, 3, 8, 8), nrow=2, padding=0).shape == (16, 16, 3)


def _history(n=4):
    return {
        "epoch": list(range(1, n + 1)),
        "train_elbo": [-300.0 + 10 * i for i in range(n)],
        "test_elbo": [-305.0 + 10 * i for i in range(n)],
        "train_reconstruction": [-280.0 + 10 * i for i in range(n)],
        "test_reconstruction": [-284.0 + 10 * i for i in range(n)],
        "train_kl": [20.0 + i for i in range(n)],
        "test_kl": [21.0 + i for i in range(n)],
    }


def test_plot_history_draws_train_and_test_curves_for_each_term():
    history = _history()
    fig = plot_history(history)
    assert len(fig.axes) == 3
    for ax, key in zip(fig.axes, ["elbo", "reconstruction", "kl"]):
        train, test = ax.get_lines()
        np.testing.assert_allclose(train.get_ydata(), history[f"train_{key}"])
        np.testing.assert_allclose(test.get_ydata(), history[f"test_{key}"])
        np.testing.assert_allclose(train.get_xdata(), history["epoch"])


def test_plot_history_without_test_data_draws_only_train_curves():
    history = {k: v for k, v in _history().items() if not k.startswith("test_")}
    fig = plot_history(history)
    assert [len(ax.get_lines()) for ax in fig.axes] == [1, 1, 1]


def test_live_loss_plot_prints_a_summary_outside_jupyter(capsys):
    live = LiveLossPlot()
    live(_history(2))
    live(_history(3))
    out = capsys.readouterr().out.strip().splitlines()
    assert live.calls == 2 and len(out) == 2
    assert out[-1].startswith("epoch 3") and "test_elbo -285.00" in out[-1]


def test_plot_latent_scatter_shows_every_point_with_class_names():
    codes = torch.randn(300, 2)
    labels = torch.arange(300) % 3
    names = ["T-shirt", "Trouser", "Pullover"]
    fig = plot_latent_scatter(codes, labels, names)
    ax = fig.axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 300
    for c, collection in enumerate(ax.collections):
        np.testing.assert_allclose(collection.get_offsets(), codes[labels == c].numpy(), atol=1e-6)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == names


def test_plot_latent_scatter_needs_2d_codes():
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        plot_latent_scatter(torch.randn(10, 3), torch.zeros(10, dtype=torch.long))


def test_latent_grid_uses_equal_prior_mass_between_plus_minus_span():
    values = latent_grid(11, span=3.0, quantiles=True)
    np.testing.assert_allclose(values[[0, -1]].numpy(), [-3.0, 3.0], atol=1e-4)
    mass = torch.distributions.Normal(0.0, 1.0).cdf(values)
    np.testing.assert_allclose(mass.diff().numpy(), np.full(10, float(mass.diff().mean())), atol=1e-5)
    np.testing.assert_allclose(latent_grid(5, 2.0, quantiles=False).numpy(), [-2, -1, 0, 1, 2])


def test_plot_latent_manifold_decodes_the_quantile_grid(model_2d):
    n = 7
    fig = plot_latent_manifold(model_2d, grid_size=n, span=2.0)
    grid = fig.axes[0].images[0].get_array()
    assert grid.shape == (n * 28, n * 28)
    values = latent_grid(n, 2.0)
    # top-left cell: smallest z1, largest z2; bottom-right: largest z1, smallest z2
    for (row, col), z in {(0, 0): [values[0], values[-1]], (n - 1, n - 1): [values[-1], values[0]]}.items():
        with torch.no_grad():
            expected = model_2d.mean_image(model_2d.decode(torch.tensor([z])))[0, 0]
        cell = grid[row * 28 : (row + 1) * 28, col * 28 : (col + 1) * 28]
        np.testing.assert_allclose(cell, expected.numpy(), atol=1e-5)


def test_plot_latent_manifold_rejects_bad_dims(model_2d):
    with pytest.raises(ValueError, match="dims"):
        plot_latent_manifold(model_2d, dims=(0, 2))


def test_plot_latent_traversal_has_one_row_per_dimension():
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=4, hidden_dims=(16,))).eval()
    fig = plot_latent_traversal(model, dims=[0, 2], values=torch.linspace(-2, 2, 5))
    grid = fig.axes[0].images[0].get_array()
    assert grid.shape == (2 * 30 + 2, 5 * 30 + 2)
    with torch.no_grad():
        expected = model.mean_image(model.decode(torch.tensor([[0.0, 0.0, 2.0, 0.0]])))[0, 0]
    np.testing.assert_allclose(grid[32:60, 122:150], expected.numpy(), atol=1e-5)


def test_plot_kl_per_dim_draws_one_bar_per_dimension_and_series():
    fig = plot_kl_per_dim({"beta=1": torch.rand(6), "beta=4": torch.rand(6)})
    assert len(fig.axes[0].patches) == 12


@pytest.mark.parametrize("images, error, words", [
    (torch.full((2, 1, 4, 4), float("nan")), ValueError, "NaN"),
    (torch.randint(0, 256, (2, 1, 4, 4)).float(), ValueError, "divide by 255"),
    (torch.rand(2, 4, 4, 3), ValueError, "x.permute(0, 3, 1, 2)"),
    (torch.rand(2, 784), ValueError, "x.view(-1, 1, 28, 28)"),
])
def test_show_images_refuses_what_it_cannot_draw_truthfully(images, error, words):
    with pytest.raises(error, match=re.escape(words)):
        show_images(images)


def test_show_images_still_clamps_decoder_means_that_stray_a_little():
    means = torch.rand(2, 1, 4, 4) * 1.2 - 0.1  # a Gaussian decoder's means: not whole numbers
    grid = image_grid(means, padding=0)
    assert grid.min() >= 0.0 and grid.max() <= 1.0


@pytest.mark.parametrize("kwargs", [{"grid_size": 1}, {"grid_size": 2.5}, {"grid_size": True}, {"span": 0},
                                    {"span": float("nan")}, {"span": -1.0}])
def test_latent_grid_refuses_bad_sizes_and_spans(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        latent_grid(**kwargs)


def test_library_figures_use_no_font_below_9_points():
    import re
    from pathlib import Path

    source = (Path(__file__).resolve().parents[1] / "vae_utils" / "plotting.py").read_text()
    small = [m.group(0) for m in re.finditer(r"(?:fontsize|labelsize|size)=(\d+(?:\.\d+)?)", source) if float(m.group(1)) < 9]
    assert not small, f"fonts below 9 pt are unreadable at the notebook's width: {small}"
