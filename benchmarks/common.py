"""What the benchmarks share: the machine they ran on and an atomic write of their results."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["machine_info", "write_atomic", "write_results"]


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place, so that a killed
    run never leaves a half-written result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise




def machine_info(**extra) -> dict:
    """The processor, core and thread counts and library versions a benchmark ran with, plus
    ``extra`` fields."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "numpy": np.__version__, "platform": platform.platform(), **extra}


def write_results(out: Path, result: dict, markdown) -> None:
    """Write a benchmark's ``result`` to ``out`` (JSON) and its ``markdown(result)`` beside it
    (``.md``), each atomically."""
    out = Path(out)
    write_atomic(out, json.dumps(result, indent=1) + "\n")
    write_atomic(out.with_suffix(".md"), markdown(result))
