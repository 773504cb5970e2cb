"""Opening, executing and saving a chapter in JupyterLab leaves the committed file unchanged apart
from outputs (issue 13, item 5).

The test does what Lab does, through the same server code: it executes a copy of a chapter with a
real kernel (which writes the kernel's ``language_info`` into the notebook), records the running
kernel's display name in ``kernelspec`` as Lab does, and saves the result through a Jupyter
server started with the book's configuration (``tools/jupyter/jupyter_server_config.py``, whose
pre-save hook restores the canonical metadata). The saved file, with its outputs stripped, must be
byte-for-byte the committed file with its outputs stripped.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tools" / "jupyter" / "jupyter_server_config.py"
CHAPTER = ROOT / "chapters" / "appendix_speed.ipynb"  # the chapter that executes in seconds
TOKEN = "flatness-roundtrip-test"

nbclient = pytest.importorskip("nbclient")
pytest.importorskip("jupyter_server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _without_outputs(nb):
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nbformat.writes(nb) + "\n"


def _request(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"token {TOKEN}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as reply:
        return json.loads(reply.read() or b"null")


@pytest.fixture
def server(tmp_path):
    """A Jupyter server on tmp_path with the book's server configuration, as `make lab` runs it."""
    port = _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--config={CONFIG}", f"--port={port}",
         "--no-browser", f"--ServerApp.root_dir={tmp_path}", f"--IdentityProvider.token={TOKEN}",
         "--ServerApp.port_retries=0", "--allow-root"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(300):
            try:
                _request(port, "GET", "/api/status")
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("jupyter server exited: " + proc.stderr.read().decode()[-2000:])
                time.sleep(0.1)
        else:
            pytest.fail("jupyter server did not start in 30 s")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_hook_restores_canonical_metadata_only_for_book_kernel():
    namespace = {"get_config": lambda: type("C", (), {"ContentsManager": type("M", (), {})()})()}
    exec(CONFIG.read_text(), namespace)
    hook = namespace["canonical_notebook_metadata"]
    model = {"type": "notebook", "content": {"metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3 (flatness book)", "language": "python"},
        "language_info": {"name": "python", "version": "3.11.9"}, "mystnb": {"x": 1}},
        "cells": [{"cell_type": "code", "metadata": {"tags": ["t"], "execution": {"a": 1}}}]}}
    hook(model, "a.ipynb", None)
    assert model["content"]["metadata"] == {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "mystnb": {"x": 1}}
    assert model["content"]["cells"][0]["metadata"] == {"tags": ["t"]}
    other = {"type": "notebook", "content": {"metadata": {
        "kernelspec": {"name": "julia-1.10"}, "language_info": {"name": "julia"}}}}
    before = json.dumps(other)
    hook(other, "b.ipynb", None)
    assert json.dumps(other) == before
    text = {"type": "file", "content": "x"}
    hook(text, "c.txt", None)
    assert text == {"type": "file", "content": "x"}


def test_execute_and_save_round_trip_leaves_chapter_unchanged(server, tmp_path):
    committed = CHAPTER.read_text()
    work = tmp_path / "chapters"
    work.mkdir()
    shutil.copy(CHAPTER, work / CHAPTER.name)
    nb = nbformat.read(work / CHAPTER.name, as_version=4)
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + env_path if env_path else "")
    try:
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                resources={"metadata": {"path": str(ROOT / "chapters")}}).execute()
    finally:
        os.environ["PYTHONPATH"] = env_path
        if not env_path:
            del os.environ["PYTHONPATH"]
    # what the kernel and the client write, and what dirtied the tree:
    assert "language_info" in nb.metadata
    assert any("execution" in c.metadata for c in nb.cells if c.cell_type == "code")
    from jupyter_client.kernelspec import KernelSpecManager
    nb.metadata["kernelspec"]["display_name"] = KernelSpecManager().get_kernel_spec("python3").display_name
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")

    _request(server, "PUT", f"/api/contents/chapters/{CHAPTER.name}",
             {"type": "notebook", "format": "json", "content": nb})
    saved = (work / CHAPTER.name).read_text()
    assert _without_outputs(nbformat.reads(saved, as_version=4)) == \
        _without_outputs(nbformat.reads(committed, as_version=4))
    # ... and the stripped committed file is the committed file itself apart from its claim
    # cell's stored outputs: the comparison above is of everything a reader did not execute.
    assert json.loads(saved)["metadata"] == json.loads(committed)["metadata"]
