"""`make paper` (running.md's paper-scale command) works as written: on tiny MNIST files in the
IDX format it executes a real-data chapter, writes the executed notebook and the chapter's claims
to their own folders, and leaves the book's claims alone (issue 18)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from test_data import _mnist_files

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or not (REPO / ".venv" / "bin" / "papermill").exists(),
    reason="needs make and the book's environment (.venv, from `make env`)")


def _make(*args, env=None, timeout=900):
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args],
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_paper_without_data_root_prints_usage():
    proc = _make("paper", "DATASET=mnist", "DATA_ROOT=")
    assert proc.returncode != 0
    assert "usage: make paper" in proc.stdout + proc.stderr


def test_paper_runs_a_chapter_on_mnist_files(tmp_path):
    _mnist_files(tmp_path / "data", n_train=120, n_test=40)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    env.update(FLATNESS_CACHE=str(tmp_path / "cache"), FLATNESS_PROGRESS="0")
    proc = _make("paper", "DATASET=mnist", f"DATA_ROOT={tmp_path / 'data'}", "SCALE=quick",
                 "PAPER_CHAPTERS=05_occam_factor", f"PAPER_OUT={tmp_path / 'out'}",
                 f"PAPER_CLAIMS={tmp_path / 'claims'}", env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (tmp_path / "out" / "05_occam_factor.mnist.quick.ipynb").exists()
    claims = json.loads((tmp_path / "claims" / "quick" / "05_occam_factor.json").read_text())
    assert claims["claims"]
    for c in claims["claims"]:
        assert c["decision"]["outcome"] in ("held", "did not hold", "not testable here")
