"""vae_utils.tutorial (the notebooks' settings block and exercise checker) and the package namespace
the notebooks import: ``import vae_utils as vu``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vae_utils as vu
from vae_utils import tutorial

PACKAGE = Path(vu.__file__).parent

PUBLIC = {
    "VAE", "VAEConfig", "load_dataset", "ImageDataset", "DatasetNotFoundError", "vae_elbo", "negative_elbo_loss",
    "TrainConfig", "fit", "train_epoch", "FitResult", "TrainingDivergedError", "evaluate_elbo",
    "estimate_log_likelihood", "save_checkpoint", "load_checkpoint", "load_or_train", "CheckpointError",
    "pick_device", "seed_everything", "show_images", "plot_history", "latent_explorer", "interpolation_explorer",
}

# The modules of the package by layer: core (the model, its math, data, training, evaluation, files),
# teaching (exact toy models and gradient estimators), extensions (other models and inference), and
# notebook support (what the notebooks share).
LAYERS = {
    "core": ["validation", "objectives", "networks", "model", "device", "idx", "data", "train_config", "training",
             "cuda_graphs", "evaluation", "files", "checkpoint", "runs", "models"],
    "teaching": ["toy", "estimators"],
    "extensions": ["flows", "conditional", "refinement"],
    "notebook support": ["tutorial", "exercises", "pretrained", "plotting", "widgets"],
}


# ----------------------------------------------------------------------------- settings
def test_settings_follow_the_quick_flag(monkeypatch):
    monkeypatch.setenv("VAE_TUTORIAL_QUICK", "1")
    s = tutorial.settings()
    assert tutorial.is_quick() and s.quick and s.epochs == 1 and s.train_images == 10_000
    assert s.checkpoint == Path("runs/fashion-mnist_mlp20_quick.pt") and isinstance(s.device, torch.device)
    monkeypatch.setenv("VAE_TUTORIAL_QUICK", "0")
    s = tutorial.settings()
    assert not tutorial.is_quick() and (s.epochs, s.train_images, s.latent_dim) == (10, None, 20)
    assert s.checkpoint == Path("runs/fashion-mnist_mlp20.pt") and s.dataset == "fashion-mnist"


def test_settings_overrides_and_configs(monkeypatch):
    monkeypatch.setenv("VAE_TUTORIAL_QUICK", "1")
    s = tutorial.settings(latent_dim=2, epochs=3, device="cpu", train_images=None)
    assert s.checkpoint == Path("runs/fashion-mnist_mlp2_quick.pt") and s.train_images is None
    assert s.model_config() == vu.VAEConfig(latent_dim=2, architecture="mlp", hidden_dims=(400,), likelihood="bernoulli")
    assert s.train_config() == vu.TrainConfig(epochs=3, batch_size=128, lr=1e-3, seed=0, device="cpu")
    assert s.train_config(beta=4.0).beta == 4.0
    with pytest.raises(TypeError, match="unknown field.*latent_dims"):
        tutorial.settings(latent_dims=2)


def test_load_data_cuts_the_training_set(monkeypatch):
    loaded = []

    def fake_load(name, split, device=None):
        loaded.append((name, split, str(device)))
        return vu.ImageDataset(torch.zeros(30, 1, 28, 28, dtype=torch.uint8), torch.zeros(30, dtype=torch.long),
                               ["a"], f"{name}/{split}")

    monkeypatch.setattr(tutorial, "load_dataset", fake_load)
    train, test = tutorial.settings(train_images=12, device="cpu").load_data()
    assert (len(train), len(test)) == (12, 30)
    assert loaded == [("fashion-mnist", "train", "cpu"), ("fashion-mnist", "test", "cpu")]


def test_default_model_is_load_or_train_at_the_settings_checkpoint(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(tutorial, "load_or_train", lambda *args, **kwargs: seen.append((args, kwargs)) or "result")
    s = tutorial.settings(device="cpu", latent_dim=3, runs=tmp_path)  # not the shipped model's settings
    train = vu.ImageDataset(torch.zeros(8, 1, 28, 28, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), ["a"], "t")
    assert tutorial.default_model(s, train, None, progress=False) == "result"
    (args, kwargs), = seen
    assert args == (s.checkpoint, s.model_config(), s.train_config(), train, None)
    assert kwargs == {"progress": False, "callback": None}


# ----------------------------------------------------------------------------- check
def test_check_passes_within_the_tolerance(capsys):
    reference = torch.tensor([10.0, -20.0, 30.0])
    assert tutorial.check(reference * 1.01, reference, name="KL")
    assert capsys.readouterr().out.startswith("KL: correct")
    assert tutorial.check([10.0, -20.0, 30.0], reference, rtol=0.0, atol=1e-9)  # lists are fine
    assert tutorial.check(torch.tensor(2.0, requires_grad=True), 2.0)


def test_check_failure_says_how_far_off_but_not_the_reference(capsys):
    reference = torch.tensor([12.345678, 23.456789])
    assert not tutorial.check(torch.tensor([6.0, 23.456789]), reference, name="ELBO")
    out = capsys.readouterr().out
    assert out.startswith("ELBO: not yet") and "51%" in out and "1 of 2 entries" in out
    for value in reference.tolist():
        for digits in (f"{value:.2f}", f"{value:.1f}", f"{value:.0f}"):
            assert digits not in out, out


def test_check_none_shape_and_nan(capsys):
    assert not tutorial.check(None, 1.0, name="Exercise 1")
    assert "not attempted yet" in capsys.readouterr().out
    assert not tutorial.check(torch.zeros(3), torch.zeros(4))
    assert "shape (3,), expected (4,)" in capsys.readouterr().out
    assert not tutorial.check(float("nan"), 1.0)
    assert "NaN" in capsys.readouterr().out
    assert not tutorial.check("abc", 1.0)
    assert "not a number" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the namespace
def test_the_public_names_and_the_submodules():
    assert set(vu.__all__) == PUBLIC and len(vu.__all__) == 24
    for name in vu.__all__:
        assert getattr(vu, name) is not None
    modules = {path.stem for path in PACKAGE.glob("*.py") if not path.stem.startswith("_")}
    assert modules == {name for layer in LAYERS.values() for name in layer}, "every module has its layer"
    for name in modules:
        assert getattr(vu, name).__name__ == f"vae_utils.{name}"
    assert vu.objectives.gaussian_kl is not None and vu.plotting.LiveLossPlot is not None  # old names, in place
    with pytest.raises(AttributeError, match="no attribute 'gaussian_kl'"):
        vu.gaussian_kl  # noqa: B018 -- not top level any more
    assert set(dir(vu)) >= PUBLIC | {"tutorial", "runs", "__version__"}


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                offenders += [f"{path.name}: {alias.name}" for alias in node.names
                              if alias.name.startswith("_") and alias.name != "__version__"]
    assert offenders == []


def package_imports() -> dict[str, set[str]]:
    """module -> the package modules it imports, at the top or inside a function alike."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported |= {node.module} if node.module else {alias.name for alias in node.names}
        graph[path.stem] = {name.split(".")[0] for name in imported} - {path.stem}
    return graph


def test_no_module_imports_itself_through_others():
    graph, done, cycles = package_imports(), set(), []

    def visit(module, path):
        if module in path:
            cycles.append(path[path.index(module):] + [module])
            return
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert cycles == []


def test_the_layers_import_downwards_only():
    """Core modules import no extension and no notebook support; extensions no notebook support."""
    graph = package_imports()
    allowed = {"core": {"core"}, "teaching": {"core", "teaching"}, "extensions": {"core", "extensions"},
               "notebook support": set(LAYERS)}
    layer_of = {module: layer for layer, modules in LAYERS.items() for module in modules}
    wrong = [f"{module} ({layer_of[module]}) imports {imported} ({layer_of[imported]})"
             for module, imports in graph.items() if module in layer_of for imported in imports
             if imported in layer_of and layer_of[imported] not in allowed[layer_of[module]]]
    assert wrong == []


def test_the_readme_and_the_package_docstring_list_every_module_by_layer():
    readme = (PACKAGE.parent / "README.md").read_text()
    for layer, modules in LAYERS.items():
        for module in modules:
            assert f"`{module}`" in readme, f"README's module table lacks {module}"
            assert module in vu.__doc__, f"vae_utils' docstring lacks {module}"
        assert layer in readme.lower() and layer in vu.__doc__.lower(), layer


def test_importing_the_package_does_not_import_torch():
    code = "import sys, vae_utils; print('torch' in sys.modules, len(vae_utils.__all__))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "24"], result.stderr


def test_check_states_a_small_tolerance_as_it_is(capsys):
    assert vu.tutorial.check(1.0005, 1.0, rtol=0.001)
    assert "within 0.1%" in capsys.readouterr().out


def test_check_with_an_absolute_tolerance_reports_it_in_absolute_terms(capsys):
    assert not tutorial.check(-5.8, -5.451, rtol=0, atol=1e-4, name="log p(x)")
    out = capsys.readouterr().out
    assert "tolerance 0.0001 absolute" in out and "off by up to 0.349" in out, out
    assert "0%" not in out  # the old line: "off by up to 0% ... (tolerance 0%)"
    assert tutorial.check(-5.45105, -5.451, rtol=0, atol=1e-4)
    assert "within 0.0001 absolute" in capsys.readouterr().out
    assert tutorial.check(1.0, 1.0005, rtol=1e-4, atol=1e-3)
    assert "within 0.01% + 0.001 absolute" in capsys.readouterr().out


def test_a_monte_carlo_check_names_the_noise_and_the_samples_needed(capsys):
    assert not tutorial.check(1.05, 1.0, rtol=0.02, name="estimate", monte_carlo_samples=1_000_000)
    out = capsys.readouterr().out
    assert "Monte Carlo noise" in out and "1,000,000 samples" in out, out
    assert not tutorial.check(1.05, 1.0, rtol=0.02)
    assert "Monte Carlo" not in capsys.readouterr().out


def test_check_shows_nothing_as_a_cell_result_in_a_notebook():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    result = shell.run_cell("import vae_utils as vu\nvu.tutorial.check(1.0, 1.0)")
    assert result.success and bool(result.result)
    assert shell.display_formatter.format(result.result)[0] == {}  # no Out[..]: True
