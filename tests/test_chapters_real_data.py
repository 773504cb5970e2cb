"""The chapters whose papers used real data run on real-data files (issue 18).

Each test writes tiny dataset files in torchvision's layout to ``tmp_path`` and executes a chapter
with papermill in quick mode on them (parameters ``DATASET``, ``DATA_ROOT``, ``SCALE``), with its
own model cache and claims folder, so that nothing of the book's cache or claims is touched. The
chapters compute and show their claims on such data but do not assert them, so a run must
complete and write a claims file whose outcomes were computed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from test_data import _mnist_files

REPO = Path(__file__).resolve().parent.parent


def run_chapter(name: str, params: dict, tmp_path: Path, timeout: float = 600) -> dict:
    """Execute ``chapters/<name>.ipynb`` with papermill and the given parameters.

    The run uses ``tmp_path / "cache"`` as its model cache (``FLATNESS_CACHE``) and
    ``tmp_path / "claims"`` for its claims (``FLATNESS_CLAIMS_DIR``), one BLAS thread and no
    progress bars; ``QUICK=True`` unless ``params`` says otherwise.

    Args:
        name: the chapter's file stem, e.g. ``"02_large_batch"``.
        params: papermill parameters (JSON-able values).
        tmp_path: a scratch folder.
        timeout: seconds before the run counts as failed.

    Returns:
        ``{"notebook": the executed notebook (nbformat), "claims": the chapter's claims file
        (parsed JSON) or None if it wrote none}``.

    Raises:
        AssertionError: papermill failed (with the end of its output).
    """
    out = tmp_path / f"{name}.ipynb"
    env = dict(os.environ, FLATNESS_CACHE=str(tmp_path / "cache"),
               FLATNESS_CLAIMS_DIR=str(tmp_path / "claims"), FLATNESS_PROGRESS="0",
               FLATNESS_QUICK="1", MPLBACKEND="module://matplotlib_inline.backend_inline",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYDEVD_DISABLE_FILE_VALIDATION="1")
    params = {"QUICK": True, **params}
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", "--cwd", str(REPO / "chapters"), "--kernel", "python3",
         "--no-progress-bar", "--log-level", "ERROR", "-y", json.dumps(params),
         str(REPO / "chapters" / f"{name}.ipynb"), str(out)],
        env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    mode = "quick" if params.get("QUICK", True) and params.get("SCALE", "quick") == "quick" else "full"
    claims = tmp_path / "claims" / mode / f"{name}.json"
    return {"notebook": nbformat.read(out, as_version=4),
            "claims": json.loads(claims.read_text()) if claims.exists() else None}


def test_large_batch_chapter_runs_on_mnist_files(tmp_path):
    pytest.importorskip("torchvision")
    pytest.importorskip("papermill")
    _mnist_files(tmp_path / "data", n_train=120, n_test=20)  # N/10 = 12, about a minute
    result = run_chapter("02_large_batch", {"DATASET": "mnist", "DATA_ROOT": str(tmp_path / "data"),
                                            "SCALE": "quick"}, tmp_path)
    claims = result["claims"]
    assert claims is not None and claims["chapter"] == "02_large_batch"
    ids = [c["id"] for c in claims["claims"]]
    assert len(ids) == len(set(ids)) >= 7
    for c in claims["claims"]:
        assert c["decision"]["outcome"] in ("held", "did not hold", "not testable here")
    # the models were trained on the files: 784 inputs, one cached run per configuration
    assert list((tmp_path / "cache").glob("*.pt"))
    mode_text = [o for cell in result["notebook"].cells if cell.cell_type == "code"
                 for o in cell.get("outputs", []) if "mnist" in json.dumps(o.get("data", {}))]
    assert mode_text, "the page does not say which data it was built on"


def _claims_computed(result, chapter: str, at_least: int) -> None:
    claims = result["claims"]
    assert claims is not None and claims["chapter"] == chapter
    ids = [c["id"] for c in claims["claims"]]
    assert len(ids) == len(set(ids)) >= at_least
    for c in claims["claims"]:
        assert c["decision"]["outcome"] in ("held", "did not hold", "not testable here")
    mode_text = [o for cell in result["notebook"].cells if cell.cell_type == "code"
                 for o in cell.get("outputs", []) if "on mnist" in json.dumps(o.get("data", {}))]
    assert mode_text, "the page does not say which data it was built on"


def test_occam_factor_chapter_runs_on_mnist_files(tmp_path):
    pytest.importorskip("torchvision")
    pytest.importorskip("papermill")
    _mnist_files(tmp_path / "data", n_train=120, n_test=40)  # classes 0 and 1: 24 training, 8 test images
    result = run_chapter("05_occam_factor", {"DATASET": "mnist", "DATA_ROOT": str(tmp_path / "data"),
                                             "SCALE": "quick"}, tmp_path)
    _claims_computed(result, "05_occam_factor", 13)  # 13 claims: the Laplace checks and the digits pair too


def test_noise_scale_chapter_runs_on_mnist_files(tmp_path):
    pytest.importorskip("torchvision")
    pytest.importorskip("papermill")
    _mnist_files(tmp_path / "data", n_train=120, n_test=40)  # N = 120: size sweep 7, 30 (quick mode)
    result = run_chapter("06_noise_scale", {"DATASET": "mnist", "DATA_ROOT": str(tmp_path / "data"),
                                            "SCALE": "quick"}, tmp_path)
    _claims_computed(result, "06_noise_scale", 10)
    # the networks were trained on the files: one cached run per configuration
    assert list((tmp_path / "cache").glob("*.pt"))
