r"""How much faster is training (and measuring) many small networks as one population?

Usage::

    python -m benchmarks.population [--quick] [--out PATH] [--epochs E]

Side by side, in one run, on MNIST-1D (4,000 training signals, the test set evaluated after
every epoch as :func:`flatness.cache.load_or_train` does):

* ``train``: :func:`flatness.population.train_population` of ``P`` members (seeds ``0..P-1``,
  SGD with momentum 0.9, ``lr = 0.05``) against the one-by-one loop of
  :func:`flatness.training.train` on the same configurations, for ``P`` ∈ {1, 5, 20, 50}
  reference MLPs (40-100-100-10) at ``B`` ∈ {16, 64, 400}, and for the 1-D CNN at ``B = 64``.
  The loop is timed on ``min(P, 3)`` members and scaled to ``P`` (members of one
  architecture and batch size cost the same). Throughput is member-epochs per second.
* ``lambda_max``: :func:`flatness.population_curvature.population_top_eigenvalues` of the
  ``P = 20`` MLP members after their epoch, against :func:`flatness.curvature.top_eigenvalues`
  on each in turn (``k = 1``, ``tol = 1e-3``, full training set), with the largest relative
  difference of the two.

Every cell runs after a warm-up of both paths, with one torch thread, the population first and
the loop right after it, three times (once with ``--quick``); the medians are reported. The
machine's load average (``os.getloadavg``) is recorded before and after. Records go to
``--out`` (default ``benchmarks/results/population.json``; with ``--quick``, which runs a few
small cells in under a minute, ``_build/benchmarks/population.json``), written atomically, and
a markdown table beside it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/curvature.py

import torch  # noqa: E402
from torch import nn  # noqa: E402

from flatness.curvature import top_eigenvalues  # noqa: E402
from flatness.data import mnist1d  # noqa: E402
from flatness.models import cnn1d, mlp  # noqa: E402
from flatness.population import train_population  # noqa: E402
from flatness.population_curvature import population_top_eigenvalues  # noqa: E402
from flatness.training import train  # noqa: E402
from benchmarks.common import machine_info, write_results  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "population.json"
QUICK_OUT = Path(__file__).resolve().parent.parent / "_build" / "benchmarks" / "population.json"
LOOP_MEMBERS = 3
MAKERS = {"mlp": lambda: mlp(40, (100, 100), 10), "cnn": lambda: cnn1d()}


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def make_models(name: str, P: int) -> List[nn.Module]:
    torch.manual_seed(0)
    return [MAKERS[name]() for _ in range(P)]


def options(P: int, B: int, epochs: int) -> List[dict]:
    return [dict(lr=0.05, momentum=0.9, batch_size=B, epochs=epochs, seed=i) for i in range(P)]


def bench_train(name: str, P: int, B: int, epochs: int, split, repeats: int) -> tuple:
    opts = options(P, B, epochs)
    pop_times, loop_times = [], []
    for _ in range(repeats):  # interleaved: population, then loop, then again
        models = make_models(name, P)
        loop_models = make_models(name, min(P, LOOP_MEMBERS))
        t = time.perf_counter()
        train_population(models, split.train, test_data=split.test, options=opts,
                         progress=False)
        pop_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        for m, o in zip(loop_models, opts):
            train(m, split.train, test_data=split.test, progress=False, **o)
        loop_times.append((time.perf_counter() - t) * P / len(loop_models))
    population, loop = statistics.median(pop_times), statistics.median(loop_times)
    with torch.no_grad():
        dev = max(float((p - q).abs().max()) for a, b in zip(models, loop_models)
                  for p, q in zip(a.parameters(), b.parameters()))
    rec = {"task": "train", "model": name, "P": P, "batch_size": B, "epochs": epochs,
           "repeats": repeats, "population_seconds": population, "loop_seconds": loop,
           "population_member_epochs_per_s": P * epochs / population,
           "loop_member_epochs_per_s": P * epochs / loop, "speedup": loop / population,
           "population_seconds_all": pop_times, "loop_seconds_all": loop_times,
           "max_abs_theta_difference": dev, "load": [round(x, 2) for x in os.getloadavg()]}
    log(f"train {name} P={P} B={B}: population {population:.2f} s, loop {loop:.2f} s, "
        f"×{loop / population:.2f}, max|Δθ| {dev:.1e}")
    return rec, models


def bench_lambda_max(models: List[nn.Module], data, repeats: int) -> dict:
    loss = nn.CrossEntropyLoss()
    pop_times, loop_times = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        batched = population_top_eigenvalues(models, loss, data, k=1, tol=1e-3)
        pop_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        single = [top_eigenvalues(m, loss, data, k=1, tol=1e-3) for m in models]
        loop_times.append(time.perf_counter() - t)
    population, loop = statistics.median(pop_times), statistics.median(loop_times)
    rel = max(abs(a.lambda_max - b.lambda_max) / abs(b.lambda_max)
              for a, b in zip(batched, single))
    rec = {"task": "lambda_max", "model": "mlp", "P": len(models), "batch_size": None,
           "epochs": None, "repeats": repeats, "population_seconds": population,
           "loop_seconds": loop, "speedup": loop / population,
           "population_seconds_all": pop_times, "loop_seconds_all": loop_times,
           "max_rel_difference": rel,
           "population_products": [r.products for r in batched],
           "loop_products": [r.products for r in single],
           "load": [round(x, 2) for x in os.getloadavg()]}
    log(f"lambda_max P={len(models)}: population {population:.2f} s, loop {loop:.2f} s, "
        f"×{loop / population:.2f}, max rel. difference {rel:.1e}")
    return rec


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# Population benchmark", "",
             f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores, "
             f"{m['torch_threads']} torch thread), torch {m['torch']}; load average "
             f"{result['load_before']} before, {result['load_after']} after (other jobs shared "
             f"the machine). Command: `{result['command']}`.", "",
             "| task | model | P | B | population s | loop s | member-epochs/s (pop.) | "
             "member-epochs/s (loop) | speed-up | agreement | load (1 min) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["records"]:
        if r["task"] == "train":
            agree = f"max abs Δθ {r['max_abs_theta_difference']:.1e}"
            rates = (f"{r['population_member_epochs_per_s']:.2f} | "
                     f"{r['loop_member_epochs_per_s']:.2f}")
        else:
            agree = f"max rel. Δλ {r['max_rel_difference']:.1e}"
            rates = " | "
        lines.append(f"| {r['task']} | {r['model']} | {r['P']} | {r['batch_size'] or ''} | "
                     f"{r['population_seconds']:.2f} | {r['loop_seconds']:.2f} | {rates} | "
                     f"×{r['speedup']:.2f} | {agree} | {r['load'][0]} |")
    if result["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few small cells (< 1 minute)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per training cell")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load_before = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    split, split_c = mnist1d(), mnist1d(channels=True)
    repeats = 1 if args.quick else 3
    if args.quick:
        cells = [("mlp", 1, 64), ("mlp", 5, 64), ("cnn", 5, 64)]
        lambda_p = 5
    else:
        cells = [("mlp", P, B) for B in (16, 64, 400) for P in (1, 5, 20, 50)]
        cells += [("cnn", P, 64) for P in (1, 5, 20)]
        lambda_p = 20
    log("warm-up ...")
    for name, s in (("mlp", split), ("cnn", split_c)):
        bench_train(name, 2, 400, 1, s, 1)
    records, lam_models = [], None
    for name, P, B in cells:
        rec, models = bench_train(name, P, B, args.epochs, split_c if name == "cnn" else split,
                                  repeats)
        records.append(rec)
        if name == "mlp" and B == 64 and P >= lambda_p:
            lam_models = models[:lambda_p]
    if lam_models is None:
        lam_models = make_models("mlp", lambda_p)
    population_top_eigenvalues(lam_models[:2], nn.CrossEntropyLoss(), split.train)  # warm-up
    top_eigenvalues(lam_models[0], nn.CrossEntropyLoss(), split.train, tol=1e-3)
    records.append(bench_lambda_max(lam_models, split.train, repeats))
    notes = [
        f"Medians of {repeats} interleaved repeats. train: {args.epochs} epoch(s) per cell, "
        "SGD momentum 0.9, lr 0.05, seeds 0..P-1, the "
        "test set evaluated after every epoch; the loop is timed on "
        f"min(P, {LOOP_MEMBERS}) members and scaled to P. max abs Δθ compares the population's "
        "members with the loop's (float32 rounding).",
        "lambda_max: k=1, tol=1e-3 on the full 4,000-sample training loss, members after "
        "their training epoch; products per member are recorded in the JSON.",
        "Both paths do the same arithmetic; the population saves the per-step overhead of "
        "the loop (Python, dispatch, optimizer), which is most of a step at small B and little "
        "at B = 400, and little of a full-data Hessian-vector product, which is already a "
        "large matrix product for one member.",
    ]
    result = {"command": "python -m benchmarks.population" + (" --quick" if args.quick else ""),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine_info(), "load_before": load_before,
              "load_after": [round(x, 2) for x in os.getloadavg()],
              "total_seconds": round(time.perf_counter() - start, 1), "notes": notes,
              "records": records}
    out = Path(args.out) if args.out is not None else (QUICK_OUT if args.quick else DEFAULT_OUT)
    write_results(out, result, markdown)
    log(f"wrote {out} and {out.with_suffix('.md')} in {result['total_seconds']} s")
    return result


if __name__ == "__main__":
    main()
