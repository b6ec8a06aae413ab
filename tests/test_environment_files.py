"""The environment files agree with pyproject.toml and with each other.

No conda and no Docker engine run here, so environment.yml and binder/ cannot be built in CI. Instead
these tests read them and check what a build would depend on:

- environment.yml (conda-forge, for readers' own machines) and binder/ (repo2docker, for Binder) hold
  the same packages as pyproject.toml, with the same minimum versions;
- Binder gets the CPU-only PyTorch build, Fashion-MNIST from the distribution package, and a
  postBuild that installs vae_utils from the checkout;
- the nbval sanitizer (.ci/nbval_sanitize.cfg) is well formed and scrubs the noise it claims to.
"""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml  # PyYAML: a dependency of jupyter_events, which jupyterlab (the dev extra) pulls in.
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib
    tomllib = pytest.importorskip("tomli", reason="Python 3.10 needs `pip install tomli` to read pyproject.toml")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
ENVIRONMENT_YML = REPO / "environment.yml"
BINDER = REPO / "binder"
BINDER_REQUIREMENTS = BINDER / "requirements.txt"
SANITIZE_CFG = REPO / ".ci" / "nbval_sanitize.cfg"

CPU_WHEEL_INDEX = "https://download.pytorch.org/whl/cpu"

# Packages that pyproject.toml lists but the reader environments deliberately leave out, and why.
LEFT_OUT_OF_READER_ENVIRONMENTS = {
    "playwright": "only tests/test_browser.py needs it, together with Debian's chromium; CI installs both",
}

# conda-forge package name -> PyPI distribution name, where they differ.
CONDA_TO_PYPI = {
    "pytorch": "torch",
    "pytorch-cpu": "torch",
    "pytorch-gpu": "torch",
    "matplotlib-base": "matplotlib",
}
# conda packages that are the toolchain, not dependencies of vae_utils.
CONDA_TOOLCHAIN = {"python", "pip"}


# ---------------------------------------------------------------------------------------------------
# Readers for the four formats
# ---------------------------------------------------------------------------------------------------


def read_pyproject() -> dict:
    with PYPROJECT.open("rb") as f:
        return tomllib.load(f)


def pyproject_requirements() -> dict[str, Requirement]:
    """Every requirement of the runtime dependencies and all extras, by canonical name.

    Where a package appears twice (e.g. jupyterlab in two extras) the specifiers must agree.
    """
    project = read_pyproject()["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs.extend(extra)
    requirements: dict[str, Requirement] = {}
    for spec in specs:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        if name == canonicalize_name(project["name"]):
            continue  # self-references such as "vae_utils[notebooks]"
        if name in requirements:
            assert requirements[name].specifier == requirement.specifier, (
                f"pyproject.toml lists {name} twice with different versions: "
                f"{requirements[name]} and {requirement}; make them the same"
            )
        requirements[name] = requirement
    return requirements


def runtime_requirements() -> dict[str, Requirement]:
    return {canonicalize_name(Requirement(s).name): Requirement(s) for s in read_pyproject()["project"]["dependencies"]}


def expected_reader_packages() -> set[str]:
    return set(pyproject_requirements()) - set(LEFT_OUT_OF_READER_ENVIRONMENTS)


def read_environment_yml() -> dict:
    with ENVIRONMENT_YML.open() as f:
        return yaml.safe_load(f)


_CONDA_SPEC = re.compile(r"^\s*(?P<name>[A-Za-z0-9_.\-]+)\s*(?P<version>.*?)\s*$")


def parse_conda_spec(spec: str) -> tuple[str, SpecifierSet]:
    """"pytorch>=2.1" -> ("pytorch", SpecifierSet(">=2.1")). Only the pip-style subset is accepted."""
    match = _CONDA_SPEC.match(spec)
    assert match, f"environment.yml: cannot read the dependency {spec!r}"
    version = match["version"]
    try:
        specifier = SpecifierSet(version)
    except Exception:
        pytest.fail(
            f"environment.yml: the version in {spec!r} is not a pip-style range; "
            "write it as e.g. 'pytorch>=2.1' so it can be checked against pyproject.toml"
        )
    return match["name"].lower(), specifier


def environment_yml_dependencies() -> tuple[dict[str, SpecifierSet], list[str]]:
    """(conda dependencies by PyPI name, pip entries) of environment.yml; toolchain entries included."""
    conda: dict[str, SpecifierSet] = {}
    pip_entries: list[str] = []
    for entry in read_environment_yml()["dependencies"]:
        if isinstance(entry, dict):
            assert set(entry) == {"pip"}, f"environment.yml: unexpected nested section {entry!r}"
            pip_entries.extend(entry["pip"])
            continue
        name, specifier = parse_conda_spec(str(entry))
        name = CONDA_TO_PYPI.get(name, name)
        assert name not in conda, f"environment.yml lists {name} twice"
        conda[name] = specifier
    return conda, pip_entries


def read_requirements_txt(path: Path) -> tuple[dict[str, Requirement], list[str]]:
    """(requirements by canonical name, option lines such as --extra-index-url) of a pip requirements file."""
    requirements: dict[str, Requirement] = {}
    options: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.startswith("-"):
            options.append(line)
            continue
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name not in requirements, f"{path.relative_to(REPO)} lists {name} twice"
        requirements[name] = requirement
    return requirements, options


def lower_bound(specifier: SpecifierSet) -> Version | None:
    """The version a range starts at: the X of '>=X' or '==X' (public part), else None."""
    bounds = [Version(s.version).public for s in specifier if s.operator in (">=", "==", "~=")]
    return Version(max(bounds, key=Version)) if bounds else None


def apt_packages() -> list[str]:
    """binder/apt.txt the way repo2docker reads it: '#' starts a comment, one package per line."""
    packages = []
    for line in (BINDER / "apt.txt").read_text().splitlines():
        package = line.partition("#")[0].strip()
        if package:
            packages.append(package)
    return packages


# ---------------------------------------------------------------------------------------------------
# pyproject.toml itself
# ---------------------------------------------------------------------------------------------------


def test_pyproject_dependencies_all_have_a_minimum_version():
    for name, requirement in pyproject_requirements().items():
        assert lower_bound(requirement.specifier) is not None, (
            f"pyproject.toml: {requirement} has no minimum version; write it as '{name}>=X' so the "
            "environment files can be kept in step with it"
        )


# ---------------------------------------------------------------------------------------------------
# environment.yml (conda users)
# ---------------------------------------------------------------------------------------------------


def test_environment_yml_uses_conda_forge_only():
    channels = read_environment_yml().get("channels")
    assert channels == ["conda-forge"], (
        f"environment.yml channels are {channels}; use exactly [conda-forge] (mixing in 'defaults' "
        "gives slow, inconsistent solves and license terms readers did not ask for)"
    )


def test_environment_yml_python_matches_requires_python():
    conda, _ = environment_yml_dependencies()
    requires_python = SpecifierSet(read_pyproject()["project"]["requires-python"])
    assert "python" in conda, "environment.yml must pin python (e.g. 'python>=3.10')"
    assert lower_bound(conda["python"]) == lower_bound(requires_python), (
        f"environment.yml has python{conda['python']} but pyproject.toml requires-python is "
        f"'{requires_python}'; make the minimum the same"
    )


def test_environment_yml_has_the_same_packages_as_pyproject():
    conda, _ = environment_yml_dependencies()
    listed = {canonicalize_name(name) for name in conda} - CONDA_TOOLCHAIN
    expected = expected_reader_packages()
    assert not expected - listed, (
        f"environment.yml is missing {sorted(expected - listed)} from pyproject.toml; add them "
        f"(conda-forge names: {CONDA_TO_PYPI} map to PyPI names)"
    )
    assert not listed - expected, (
        f"environment.yml has {sorted(listed - expected)} that pyproject.toml does not list; add them "
        "to pyproject.toml or remove them"
    )


def test_environment_yml_installs_the_checkout_with_pip():
    conda, pip_entries = environment_yml_dependencies()
    assert "pip" in conda, "environment.yml: list 'pip' as a conda dependency before the pip: section"
    assert [e.strip() for e in pip_entries] == ["-e ."], (
        f"environment.yml pip section is {pip_entries}; it should only install vae_utils from the "
        "checkout ('-e .'), everything else comes from conda-forge"
    )


def test_environment_yml_minimum_versions_match_pyproject():
    conda, _ = environment_yml_dependencies()
    for name, requirement in pyproject_requirements().items():
        if name not in conda:
            continue  # reported by the package-set test
        assert lower_bound(conda[name]) == lower_bound(requirement.specifier), (
            f"environment.yml has {name}{conda[name]} but pyproject.toml has {requirement}; "
            "make the minimum versions the same"
        )


# ---------------------------------------------------------------------------------------------------
# binder/ (repo2docker)
# ---------------------------------------------------------------------------------------------------


def test_binder_uses_exactly_one_python_environment_file():
    # repo2docker picks environment.yml over requirements.txt and silently ignores the other.
    present = [n for n in ("environment.yml", "requirements.txt", "Pipfile", "setup.py") if (BINDER / n).exists()]
    assert present == ["requirements.txt"], (
        f"binder/ has {present}; it should have only requirements.txt (the CPU-only torch wheels); "
        "repo2docker would ignore all but one of these"
    )


def test_binder_requirements_have_the_same_packages_as_pyproject():
    requirements, _ = read_requirements_txt(BINDER_REQUIREMENTS)
    listed = set(requirements)
    expected = expected_reader_packages()
    assert not expected - listed, f"binder/requirements.txt is missing {sorted(expected - listed)} from pyproject.toml"
    assert not listed - expected, (
        f"binder/requirements.txt has {sorted(listed - expected)} that pyproject.toml does not list"
    )


def test_binder_and_environment_yml_list_the_same_packages():
    conda, _ = environment_yml_dependencies()
    requirements, _ = read_requirements_txt(BINDER_REQUIREMENTS)
    conda_names = {canonicalize_name(n) for n in conda} - CONDA_TOOLCHAIN
    assert conda_names == set(requirements), (
        f"only in environment.yml: {sorted(conda_names - set(requirements))}; "
        f"only in binder/requirements.txt: {sorted(set(requirements) - conda_names)}"
    )


def test_binder_versions_do_not_contradict_pyproject():
    requirements, _ = read_requirements_txt(BINDER_REQUIREMENTS)
    for name, wanted in pyproject_requirements().items():
        if name not in requirements:
            continue  # reported by the package-set test
        binder = requirements[name]
        pins = [s for s in binder.specifier if s.operator == "=="]
        for pin in pins:
            assert wanted.specifier.contains(pin.version, prereleases=True), (
                f"binder/requirements.txt pins {binder} but pyproject.toml requires {wanted}"
            )
        if not pins:
            assert lower_bound(binder.specifier) == lower_bound(wanted.specifier), (
                f"binder/requirements.txt has {binder} but pyproject.toml has {wanted}; "
                "make the minimum versions the same"
            )


def test_binder_torch_is_the_cpu_only_build():
    requirements, options = read_requirements_txt(BINDER_REQUIREMENTS)
    index_options = [o for o in options if o.split()[0] in ("--extra-index-url", "--index-url", "-i")]
    assert any(o.split()[-1].rstrip("/") == CPU_WHEEL_INDEX for o in index_options), (
        f"binder/requirements.txt must point pip at PyTorch's CPU wheel index: add "
        f"'--extra-index-url {CPU_WHEEL_INDEX}' (found options {options})"
    )
    for name in ("torch", "torchvision"):
        pins = [s for s in requirements[name].specifier if s.operator == "=="]
        assert pins and all(Version(p.version).local == "cpu" for p in pins), (
            f"binder/requirements.txt has {requirements[name]}; pin the CPU build, e.g. '{name}==X.Y.Z+cpu', "
            "or pip takes PyPI's multi-GB CUDA build, which Binder has no GPU for"
        )


def test_binder_torchvision_matches_torch():
    # torchvision 0.(m+15) is built against torch 2.m (0.16 <-> 2.1, ..., 0.29 <-> 2.14).
    requirements, _ = read_requirements_txt(BINDER_REQUIREMENTS)
    torch = Version(next(iter(requirements["torch"].specifier)).version)
    vision = Version(next(iter(requirements["torchvision"].specifier)).version)
    assert (torch.major, vision.major, vision.minor) == (2, 0, torch.minor + 15), (
        f"binder/requirements.txt pins torch {torch} with torchvision {vision}; torch 2.{torch.minor} "
        f"needs torchvision 0.{torch.minor + 15}"
    )
    project = runtime_requirements()
    torch_min, vision_min = lower_bound(project["torch"].specifier), lower_bound(project["torchvision"].specifier)
    assert (vision_min.major, vision_min.minor) == (0, torch_min.minor + 15), (
        f"pyproject.toml minima torch>={torch_min} and torchvision>={vision_min} are not a matching pair"
    )


def test_binder_python_version_satisfies_requires_python():
    runtime = BINDER / "runtime.txt"
    assert runtime.exists(), "binder/runtime.txt is missing; write e.g. 'python-3.11' so Binder's Python is fixed"
    text = runtime.read_text().strip()
    match = re.fullmatch(r"python-(\d+\.\d+)", text)
    assert match, f"binder/runtime.txt says {text!r}; repo2docker expects 'python-X.Y'"
    requires_python = SpecifierSet(read_pyproject()["project"]["requires-python"])
    assert requires_python.contains(match[1] + ".0"), (
        f"binder/runtime.txt asks for Python {match[1]} but pyproject.toml requires-python is '{requires_python}'"
    )


def test_binder_apt_installs_fashion_mnist():
    packages = apt_packages()
    assert "dataset-fashion-mnist" in packages, (
        f"binder/apt.txt lists {packages}; add 'dataset-fashion-mnist' (Ubuntu's package puts the "
        "idx files in /usr/share/datasets/fashion-mnist, so Binder needs no download)"
    )
    for package in packages:
        assert re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", package), f"binder/apt.txt: {package!r} is not a package name"


def test_binder_postbuild_is_an_executable_bash_script_that_stops_on_errors():
    post_build = BINDER / "postBuild"
    assert post_build.exists(), "binder/postBuild is missing"
    mode = post_build.stat().st_mode
    assert mode & stat.S_IXUSR, "binder/postBuild is not executable; run `chmod +x binder/postBuild`"
    lines = post_build.read_text().splitlines()
    assert lines[0] in ("#!/usr/bin/env bash", "#!/bin/bash"), f"binder/postBuild starts with {lines[0]!r}; use a bash shebang"
    assert any(re.match(r"\s*set -[a-z]*e", line) for line in lines), (
        "binder/postBuild must `set -e` (or `set -euo pipefail`) so a failed step fails the Binder build"
    )


def test_binder_postbuild_is_executable_in_git():
    # A fresh clone takes the file mode from git's index, not from this working tree.
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--stage", "binder/postBuild"], cwd=REPO, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"git is not available: {error}")
    if listed.returncode != 0 or not listed.stdout.strip():
        pytest.skip("binder/postBuild is not tracked by git yet")
    assert listed.stdout.split()[0] == "100755", (
        "git stores binder/postBuild without its executable bit; run `git update-index --chmod=+x binder/postBuild`"
    )


def test_binder_postbuild_installs_the_checkout_without_dependencies():
    text = (BINDER / "postBuild").read_text()
    commands = [line.split(" #")[0].strip() for line in text.splitlines()]
    commands = [c for c in commands if c and not c.startswith("#")]
    installs = [c for c in commands if re.search(r"\bpip\b.*\binstall\b", c)]
    assert any("--no-deps" in c and re.search(r"(-e|--editable)\s+\.(\s|$)", c) for c in installs), (
        f"binder/postBuild should install vae_utils from the checkout with `pip install --no-deps -e .` "
        f"(dependencies come from binder/requirements.txt); found pip commands {installs}"
    )
    assert any(re.fullmatch(r'cd "?\$\(dirname "?\$0"?\)"?/\.\."?', c) for c in commands), (
        "binder/postBuild should `cd \"$(dirname \"$0\")/..\"` first, so `-e .` is the checkout wherever it runs"
    )


# ---------------------------------------------------------------------------------------------------
# .ci/nbval_sanitize.cfg
# ---------------------------------------------------------------------------------------------------


def sanitize_rules() -> list[tuple[str, str]]:
    from nbval.plugin import get_sanitize_patterns  # nbval's own reader, so we test what it will see

    return get_sanitize_patterns(SANITIZE_CFG.read_text())


def sanitize(text: str) -> str:
    for regex, replace in sanitize_rules():
        text = re.sub(regex, replace, text)
    return text


def test_sanitize_config_rules_are_complete_and_compile():
    rules = sanitize_rules()
    lines = SANITIZE_CFG.read_text().splitlines()
    n_regex = sum(line.startswith("regex:") for line in lines)
    assert len(rules) == n_regex, (
        f".ci/nbval_sanitize.cfg has {n_regex} 'regex:' lines but nbval reads only {len(rules)} rules: "
        "each 'regex:' line must be followed directly by its 'replace:' line"
    )
    for regex, replace in rules:
        assert regex == regex.strip() and replace == replace.strip(), (
            f"trailing whitespace in rule {regex!r} -> {replace!r} would become part of the pattern"
        )
        re.compile(regex)


@pytest.mark.parametrize(
    "noisy, clean",
    [
        (" 40%|████      | 4/10 [00:01<00:02,  3.91it/s, loss=181]", "PROGRESS-BAR"),
        ("<vae_utils.model.VAE object at 0x7f3a2c1b9d50>", "<vae_utils.model.VAE object at 0xADDRESS>"),
        ("saved to /tmp/tmpab12cd/runs/quick/model.pt", "saved to PATH"),
        ("loaded /home/ada/vae/runs/quick/model.pt", "loaded PATH"),
        ("data in /usr/share/datasets/fashion-mnist", "data in PATH"),
        ("saved to C:\\Users\\ada\\runs\\model.pt", "saved to PATH"),
        ("epoch 3 took 1.84 s", "epoch 3 took DURATION"),
        ("12 ms per update", "DURATION per update"),
        ("speed: 1234.5 it/s", "speed: RATE"),
        ("3.2 s/it", "RATE"),
        ("elapsed 0:01:27", "elapsed CLOCK"),
        ("peak memory 153.2 MiB", "peak memory MEMORY-SIZE"),
        # What must survive: numbers that are results, and URLs.
        ("test ELBO -245.31 nats, KL 24.9", "test ELBO -245.31 nats, KL 24.9"),
        ("latent_dim=20, epochs=10", "latent_dim=20, epochs=10"),
        ("see https://mybinder.org/v2/gh/x/y/HEAD", "see https://mybinder.org/v2/gh/x/y/HEAD"),
    ],
)
def test_sanitize_config_scrubs_run_to_run_noise_only(noisy, clean):
    assert sanitize(noisy) == clean
