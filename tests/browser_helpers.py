"""Helpers for tests/test_browser.py: a JupyterLab server on loopback and a headless Chromium page.

Both are context managers that always clean up: the server is asked to shut down, then its process
group is terminated, then killed, and any kernel it left behind (found by a marker in its
environment) is killed by process id. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path(os.environ.get("VAE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--no-proxy-server",  # loopback only, whatever proxy the environment names
]
SERVER_START_S = 90
SERVER_STOP_S = 20
MARKER = "VAE_BROWSER_TEST_SERVER"

# JupyterLab user settings for a quiet, predictable page: no news/update toasts, and every cell kept
# in the DOM (the default windowing leaves off-screen cells unrendered).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

# Loopback requests never go through a proxy.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def require_browser() -> None:
    """Skip, naming what is missing, unless Chromium and the playwright package are installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (or set VAE_CHROMIUM)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright Python package is missing: `pip install playwright` (no browser download needed)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class JupyterLab:
    base_url: str
    token: str
    root: Path
    log_path: Path
    process: subprocess.Popen

    def url(self, path: str) -> str:
        separator = "&" if "?" in path else "?"
        return f"{self.base_url}{path}{separator}token={self.token}"

    def request(self, path: str, method: str = "GET", timeout: float = 5.0) -> bytes:
        req = urllib.request.Request(
            f"{self.base_url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with _LOCAL.open(req, timeout=timeout) as response:
            return response.read()

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "JupyterLab log (last lines):\n" + "\n".join(lines[-n:])


def _copy_notebooks(source: Path, root: Path) -> None:
    # runs/ comes along: checkpoints that earlier notebooks (04, or nbval's run of the series) cached
    # are reused as a reader's JupyterLab would reuse them; load_or_train retrains on any config mismatch.
    shutil.copytree(
        source, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__")
    )


def _write_lab_settings(settings_dir: Path) -> None:
    for relative, values in LAB_SETTINGS.items():
        path = settings_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def _processes_with_marker(value: str) -> list[int]:
    """Ids of processes whose environment holds MARKER=value (our server and the kernels it started)."""
    needle = f"{MARKER}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _stop(server: JupyterLab, marker: str) -> None:
    process = server.process
    with contextlib.suppress(Exception):
        server.request("api/shutdown", method="POST")  # shuts its kernels down too
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=SERVER_STOP_S)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=SERVER_STOP_S / 2)
    if Path("/proc").is_dir():
        for pid in _processes_with_marker(marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def start_jupyterlab(notebooks: Path, workdir: Path, env: dict[str, str] | None = None):
    """Run JupyterLab on 127.0.0.1 with a copy of `notebooks` as its root; yields a JupyterLab."""
    root = workdir / "notebooks"
    _copy_notebooks(notebooks, root)
    for name in ("settings", "workspaces", "config", "data", "runtime", "ipython"):
        (workdir / name).mkdir(exist_ok=True)
    _write_lab_settings(workdir / "settings")
    port, token, marker = free_port(), secrets.token_hex(16), secrets.token_hex(8)
    server_env = {
        **os.environ,
        **(env or {}),
        # The developer's own Jupyter and IPython configuration stays out of the test.
        "JUPYTER_CONFIG_DIR": str(workdir / "config"),
        "JUPYTER_DATA_DIR": str(workdir / "data"),
        "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
        "IPYTHONDIR": str(workdir / "ipython"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "PYTHONUNBUFFERED": "1",
        MARKER: marker,
    }
    command = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--allow-root",  # CI runs as root
        "--ServerApp.terminals_enabled=False",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run commands as the menus do
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        f"--LabApp.user_settings_dir={workdir / 'settings'}",
        f"--LabApp.workspaces_dir={workdir / 'workspaces'}",
    ]
    log_path = workdir / "jupyterlab.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=root, env=server_env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,  # own process group, killed as one
        )
    server = JupyterLab(f"http://127.0.0.1:{port}/", token, root, log_path, process)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {process.returncode}\n{server.log_tail()}")
            try:
                json.loads(server.request("api/status", timeout=2))
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not answer within {SERVER_START_S} s\n{server.log_tail()}")
                time.sleep(0.5)
        yield server
    finally:
        _stop(server, marker)


@contextlib.contextmanager
def start_chromium(profile_dir: Path, viewport=(1400, 1000)):
    """Headless Debian Chromium through Playwright, with a fresh profile; yields a page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]},
            timeout=60_000,
        )
        try:
            context.set_default_timeout(30_000)
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()


def find_notebook_using(notebook_dir: Path, code: str) -> Path | None:
    """The first notebook (in series order) with a code cell containing `code`."""
    for path in sorted(notebook_dir.glob("*.ipynb")):
        with contextlib.suppress(OSError, ValueError):
            cells = json.loads(path.read_text())["cells"]
            for cell in cells:
                source = cell.get("source", "")
                source = "".join(source) if isinstance(source, list) else source
                if cell.get("cell_type") == "code" and code in source:
                    return path
    return None
