"""The library stands alone: `pip install flatness` gives a reader the measurements without the
book's stack, and importing it changes nothing global."""

import subprocess
import sys

OPTIONAL = ("matplotlib", "mnist1d", "sklearn", "IPython", "torchvision", "myst_nb", "papermill")


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_import_needs_no_optional_dependency_and_prints_nothing():
    out = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c",
         "import sys, flatness\n"
         f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))"],
        check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]" and out.stderr == ""


def test_import_sets_no_global_state():
    code = ("import torch, numpy as np\n"
            "a = torch.initial_seed(); d = torch.get_default_dtype()\n"
            "import flatness\n"
            "print(torch.initial_seed() == a and torch.get_default_dtype() == d)")
    assert _run(code) == "True"


def test_one_version_source():
    import flatness

    meta = _run("import importlib.metadata as m; print(m.version('flatness'))")
    assert meta == flatness.__version__


def test_the_namespace_holds_only_the_public_api():
    code = ("import flatness\n"
            "print(sorted({n for n in dir(flatness) if not n.startswith('_')}"
            " ^ set(flatness.__all__)))")
    assert _run(code) == "[]"
