"""A real browser: JupyterLab in headless Chromium runs 02_train.ipynb with interactive=True.

Needs Debian's Chromium and playwright-core (no browser download):

    apt-get install -y chromium
    (cd tests/browser && npm ci)
    .venv/bin/python -m pytest -m browser tests/browser

JupyterLab is started on 127.0.0.1 with a random token, settings and runtime files in a
temporary folder; the screenshot goes to outputs/browser/02_train.png.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SCREENSHOT = ROOT / "outputs" / "browser" / "02_train.png"
LAB_SETTINGS = {
    # Render every cell (JupyterLab 4 virtualizes off-screen cells by default).
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    # No news or update checks: the machine is offline.
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def tiny_parameters() -> dict:
    """The tiny configuration of tests/test_notebooks.py (loaded by path: tests is no package)."""
    spec = importlib.util.spec_from_file_location("_test_notebooks", HERE.parent / "test_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.TINY)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(port: int, token: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"jupyter lab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2
            ) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer on port {port} in 90 s:\n{log.read_text()[-3000:]}")


def requirements() -> tuple[str, str]:
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).is_file():
        pytest.skip(f"no Chromium at {chromium}: apt-get install -y chromium (or set CHROMIUM)")
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: apt-get install -y nodejs npm")
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        pytest.skip(f"playwright-core is not installed: (cd {HERE} && npm ci)")
    return chromium, node


@pytest.mark.browser
def test_train_notebook_renders_live_plot_and_frame_browser(tmp_path: Path) -> None:
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    chromium, node = requirements()
    lab_root = tmp_path / "lab"
    lab_root.mkdir()
    notebook = lab_root / "02_train_browser.ipynb"
    params = {**tiny_parameters(), "output_dir": str(tmp_path / "outputs"),
              "experiment_name": "browser", "interactive": True, "plot_every_s": 0.5}  # fmt: skip
    nb = parameterize_notebook(load_notebook_node(str(ROOT / "notebooks" / "02_train.ipynb")), params)
    nbformat.write(nb, notebook)
    settings = tmp_path / "lab_settings"
    for name, values in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))

    token, port = secrets.token_hex(24), free_port()
    env = {
        **os.environ,
        "MUJOCO_GL": "egl",
        "HF_HUB_OFFLINE": "1",
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab_workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter_runtime"),
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter_data"),  # kernels still come from sys.prefix
    }
    log = tmp_path / "jupyter.log"
    jupyter = Path(sys.executable).with_name("jupyter")
    with open(log, "wb") as log_file:
        server = subprocess.Popen(
            [str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             "--allow-root", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={lab_root}", "--ServerApp.open_browser=False"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        wait_for_server(port, token, server, log)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [node, "run_notebook.mjs", f"http://127.0.0.1:{port}/lab?token={token}",
             notebook.name, str(SCREENSHOT), "180"],
            cwd=HERE, capture_output=True, text=True, timeout=420,
            env={**env, "CHROMIUM": chromium},
        )  # fmt: skip
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    assert result.returncode == 0, (
        f"{result.stdout}\n{result.stderr[-2000:]}\njupyter log:\n{log.read_text()[-2000:]}"
    )
    assert SCREENSHOT.is_file()

    saved = nbformat.read(notebook, as_version=4)  # as the browser saved it
    outputs = [o for c in saved.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # live plot, filmstrip
    assert any("image/gif" in o.get("data", {}) for o in outputs)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
