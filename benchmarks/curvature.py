r"""How fast is flatness's curvature engine? A benchmark against PyHessian, hessian-eigenthings
and curvlinops on the full MNIST-1D training loss.

Usage::

    python -m benchmarks.curvature [--quick] [--out PATH]

For each model (the MNIST-1D MLP, the 1-D CNN, a wider MLP), trained briefly through
:func:`flatness.cache.load_or_train`, on the full 4,000-sample training loss:

* ``lambda_max`` and ``top5``: every method's own setting (flatness's and SciPy's ``tol``,
  PyHessian's ``tol`` — a change between power iterations —, hessian-eigenthings' ``max_iter``)
  is tightened along a ladder until the result is within 1e-3 relative error of a float64
  reference (``eigsh`` at ``tol=1e-10``) for each of three start seeds; the products and seconds
  reported are the medians over those seeds, the error the largest.
* ``trace@10``, ``trace@30``, ``trace@100``: root-mean-square relative error over
  ``--trace-reps`` (20) seeds at a fixed budget of products, against the exact trace (from the
  dense Hessian for the CNN; for the MLPs from the Gauss–Newton diagonal, which equals the
  Hessian diagonal for piecewise-linear networks — checked against the dense CNN Hessian).
* ``lambda_max@defaults``: each library as a user calls it, with nothing searched against the
  reference: its defaults, and the tolerance its documentation gives for 1e-3 where that
  differs; products, seconds (medians over the three seeds) and the largest error.
* ``dense_spectrum`` (CNN): the dense Hessian and all its eigenvalues.
* ``hvp``: one product by double backward through a retained graph, by a fresh double backward,
  by ``torch.func`` forward-over-reverse, and batched over 8 vectors.

Every figure is the median of at least three timed repeats after a warm-up, with the methods
interleaved. Records ``{"model", "task", "method", "products", "seconds", "rel_error",
"setting"}`` go to ``--out`` (default ``benchmarks/results/curvature.json``, the committed
results the book renders; with ``--quick`` ``_build/benchmarks/curvature.json``, so a quick run
never replaces them), written atomically, and a markdown table beside it. Peers that are not installed are skipped with a note
(``pip install -r benchmarks/requirements.txt``). ``--quick`` runs only the MLP, with fewer
repetitions.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

# On a shared machine, OpenMP threads that spin while waiting for each other slow every product
# down by an order of magnitude; passive waiting costs nothing on an idle machine. It must be
# set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from flatness import curvature, operators  # noqa: E402
from flatness.data import mnist1d  # noqa: E402
from flatness.exact_trace import piecewise_linear_trace  # noqa: E402
from flatness.cache import load_or_train  # noqa: E402
from flatness.training import TrainConfig  # noqa: E402
from benchmarks.common import machine_info, write_results  # noqa: E402

LOSS = nn.CrossEntropyLoss()
TASKS = ("hvp", "lambda_max", "defaults", "top5", "dense", "trace")
TOL = 1e-3
SEEDS = (0, 1, 2)
BUDGETS = (10, 30, 100)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "curvature.json"
# A --quick run is a smoke test: it must never replace the committed full-run results.
QUICK_OUT = Path(__file__).resolve().parent.parent / "_build" / "benchmarks" / "curvature.json"


def model_config(spec: dict, channels: bool) -> TrainConfig:
    """The brief training run that puts each model at a realistic point of its loss."""
    data = {"name": "mnist1d", "channels": True} if channels else {"name": "mnist1d"}
    return TrainConfig(model=spec, data=data, optimizer="sgd", lr=0.05, momentum=0.9,
                       batch_size=64, epochs=20, seed=0)


MODELS = {
    "mlp": ({"name": "mlp", "input_dim": 40, "widths": [100, 100], "num_classes": 10}, False),
    "cnn": ({"name": "cnn1d"}, True),
    "mlp-wide": ({"name": "mlp", "input_dim": 40, "widths": [400, 400], "num_classes": 10}, False),
}


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# peers
# --------------------------------------------------------------------------------------------

def load_peers() -> Tuple[dict, List[str]]:
    peers, notes = {}, []
    for name, module in (("pyhessian", "pyhessian"), ("hessian-eigenthings", "hessian_eigenthings"),
                         ("curvlinops", "curvlinops")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peers[name] = __import__(module)
        except Exception as err:  # a missing or broken peer is skipped, not fatal
            notes.append(f"{name} skipped: {type(err).__name__}: {err} "
                         "(pip install -r benchmarks/requirements.txt)")
    return peers, notes


def peer_versions(peers: dict) -> dict:
    from importlib import metadata

    dists = {"pyhessian": "pyhessian", "hessian-eigenthings": "hessian-eigenthings",
             "curvlinops": "curvlinops-for-pytorch"}
    out = {}
    for name in peers:
        try:
            out[name] = metadata.version(dists[name])
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


class Counter:
    """Counts calls of a wrapped function (Hessian-vector products)."""

    def __init__(self):
        self.n = 0

    def wrap(self, fn: Callable, per_call: Callable = lambda *a, **k: 1) -> Callable:
        def wrapped(*args, **kwargs):
            self.n += per_call(*args, **kwargs)
            return fn(*args, **kwargs)
        return wrapped


def clear_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


@contextlib.contextmanager
def pyhessian_counted(ph):
    """Count PyHessian's products by wrapping the function its solver calls."""
    module = sys.modules["pyhessian.hessian"]  # the attribute pyhessian.hessian is the class
    counter, original = Counter(), module.hessian_vector_product
    module.hessian_vector_product = counter.wrap(original)
    try:
        yield counter
    finally:
        module.hessian_vector_product = original


def pyhessian_object(ph, model, data):
    """PyHessian's ``hessian`` on the full batch. It calls ``model.eval()`` and leaves a
    ``create_graph`` gradient in ``.grad``, which it would add to on the next construction:
    clear it before and after, and restore the caller's mode.

    PyHessian builds that gradient with ``loss.backward(create_graph=True)``, for which torch
    warns of a reference cycle between each parameter and its ``.grad``; the callers break the
    cycle (``clear_grads``), so that one warning, raised inside PyHessian, is silenced here."""
    clear_grads(model)
    mode = model.training
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True",
                                    category=UserWarning)
            return ph.hessian(model, LOSS, data=data, cuda=False)
    finally:
        model.train(mode)


# --------------------------------------------------------------------------------------------
# eigenvalue runners: (model, data, k, setting, seed) -> (eigenvalues descending, products)
# --------------------------------------------------------------------------------------------

def run_flatness(model, data, k, tol, seed, method="lanczos"):
    res = curvature.top_eigenvalues(model, LOSS, data, k=k, tol=tol, seed=seed, method=method)
    return res.eigenvalues, res.products


def run_pyhessian(model, data, k, tol, seed, ph=None, max_iter=1000):
    with pyhessian_counted(ph) as counter:
        torch.manual_seed(seed)
        try:
            h = pyhessian_object(ph, model, data)
            vals, _ = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)
        finally:
            clear_grads(model)
    return np.sort(np.asarray(vals, dtype=float))[::-1], counter.n


def run_eigenthings(model, data, k, max_iter, seed, he=None):
    op = he.HessianOperator(model, [data], he.supervised_loss(LOSS))
    counter = Counter()
    op.matvec = counter.wrap(op.matvec)
    res = he.lanczos(op, k=k, max_iter=max_iter, which="LA", seed=seed)
    return np.sort(res.eigenvalues.detach().double().numpy())[::-1], counter.n


def curvlinops_operator(cl, model, data):
    params = [p for p in model.parameters() if p.requires_grad]
    return cl.HessianLinearOperator(model, LOSS, params, [data], check_deterministic=False)


def run_curvlinops(model, data, k, tol, seed, cl=None):
    from scipy.sparse.linalg import LinearOperator, eigsh

    A = curvlinops_operator(cl, model, data).to_scipy()
    counter = Counter()
    B = LinearOperator(A.shape, matvec=counter.wrap(A.matvec), dtype=A.dtype)
    v0 = np.random.default_rng(seed).standard_normal(A.shape[0])
    vals = eigsh(B, k=k, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
    return np.sort(vals)[::-1], counter.n


TOL_LADDER = [3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 1e-7]
POWER_LADDER = [1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6]
EIGSH_LADDER = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4, 1e-5, 1e-6]


def eigen_methods(peers: dict, k: int, power_iters: int = 1000
                  ) -> Dict[str, Tuple[Callable, list, str]]:
    """name -> (runner, ladder from loose to tight, name of the setting)."""
    methods = {
        "flatness": (run_flatness, TOL_LADDER, "tol"),
        "flatness-eigsh": (lambda *a: run_flatness(*a, method="eigsh"), EIGSH_LADDER, "tol"),
    }
    if "pyhessian" in peers:
        methods["pyhessian"] = (
            lambda *a: run_pyhessian(*a, ph=peers["pyhessian"], max_iter=power_iters),
            POWER_LADDER, "tol")
    if "hessian-eigenthings" in peers:
        methods["hessian-eigenthings"] = (
            lambda *a: run_eigenthings(*a, he=peers["hessian-eigenthings"]),
            list(range(k + 1, 41)) + list(range(45, 101, 5)), "max_iter")
    if "curvlinops" in peers:
        methods["curvlinops"] = (lambda *a: run_curvlinops(*a, cl=peers["curvlinops"]),
                                 EIGSH_LADDER, "tol")
    return methods


def rel_error(vals: np.ndarray, ref: np.ndarray) -> float:
    k = len(ref)
    if len(vals) < k:
        return float("inf")
    return float(np.max(np.abs(np.asarray(vals[:k]) - ref) / np.abs(ref)))


def tune(runner, ladder, model, data, ref, seed, max_products: int) -> Tuple[int, float, int]:
    """The loosest ladder index whose result is within ``TOL`` (galloping, then bisection;
    errors fall monotonically along each ladder up to noise). Returns (index, error, products)
    of the last run, or the tightest index tried when none reaches ``TOL``."""
    k = len(ref)
    cache: Dict[int, Tuple[float, int]] = {}

    def ok(i):
        if i not in cache:
            vals, products = runner(model, data, k, ladder[i], seed)
            cache[i] = (rel_error(vals, ref), products)
        return cache[i][0] <= TOL

    hi, step = 0, 1
    while not ok(hi):
        if hi == len(ladder) - 1 or cache[hi][1] > max_products:
            return hi, cache[hi][0], cache[hi][1]
        lo, hi, step = hi, min(hi + step, len(ladder) - 1), step * 2
    lo = max([i for i in cache if i < hi and cache[i][0] > TOL], default=-1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi, cache[hi][0], cache[hi][1]


def bench_eigen(name, model, data, ref_vals, peers, task, k, records, max_products, seeds,
                power_iters=1000):
    ref = ref_vals[:k]
    methods = eigen_methods(peers, k, power_iters)
    chosen = {}
    for method, (runner, ladder, label) in methods.items():
        t = time.perf_counter()
        i, err, products = tune(runner, ladder, model, data, ref, seeds[0], max_products)
        # the same setting must reach TOL from every start seed; tighten if it does not
        while err <= TOL and i < len(ladder) - 1:
            errs = [rel_error(runner(model, data, k, ladder[i], s)[0], ref) for s in seeds[1:]]
            if max(errs) <= TOL:
                break
            i += 1
            err = rel_error(runner(model, data, k, ladder[i], seeds[0])[0], ref)
        chosen[method] = i
        log(f"  {name} {task} {method}: {label}={ladder[i]} err={err:.1e} "
            f"({time.perf_counter() - t:.1f} s to tune)")
    results = {m: [] for m in methods}
    for rep, seed in enumerate(seeds):  # timed, interleaved, order rotated
        order = list(methods)[rep % len(methods):] + list(methods)[:rep % len(methods)]
        for method in order:
            runner, ladder, _ = methods[method]
            t = time.perf_counter()
            vals, products = runner(model, data, k, ladder[chosen[method]], seed)
            results[method].append((time.perf_counter() - t, products, rel_error(vals, ref)))
    for method, runs in results.items():
        runner, ladder, label = methods[method]
        errs = [r[2] for r in runs]
        records.append(record(name, task, method, statistics.median(r[1] for r in runs),
                              statistics.median(r[0] for r in runs), max(errs),
                              f"{label}={ladder[chosen[method]]}"
                              + ("" if max(errs) <= TOL else " (did not reach 1e-3)")))


def default_methods(peers: dict) -> Dict[str, Tuple[Callable, str]]:
    """What a user gets without tuning: ``name@setting -> (f(model, data, seed) -> (values,
    products), the setting in words)`` for λ_max, each library at its defaults and at the
    tolerance its documentation gives for the accuracy wanted (1e-3), where that differs."""

    def flatness_at(**kw):
        def run(model, data, seed):
            res = curvature.top_eigenvalues(model, LOSS, data, k=1, seed=seed, **kw)
            return res.eigenvalues, res.products
        return run

    methods = {"flatness@defaults": (flatness_at(), "top_eigenvalues(k=1): tol=1e-6"),
               "flatness@tol=1e-3": (flatness_at(tol=1e-3), "tol=1e-3 (documented: relative accuracy)")}
    if "pyhessian" in peers:
        ph = peers["pyhessian"]

        def pyhessian_defaults(model, data, seed):
            with pyhessian_counted(ph) as counter:
                torch.manual_seed(seed)
                try:
                    vals, _ = pyhessian_object(ph, model, data).eigenvalues()
                finally:
                    clear_grads(model)
            return np.sort(np.asarray(vals, dtype=float))[::-1], counter.n

        methods["pyhessian@defaults"] = (
            pyhessian_defaults, "eigenvalues(): maxIter=100, tol=1e-3 (relative change between iterations)")
    if "hessian-eigenthings" in peers:
        he = peers["hessian-eigenthings"]

        def eigenthings_at(**kw):
            def run(model, data, seed):
                op = he.HessianOperator(model, [data], he.supervised_loss(LOSS))
                counter = Counter()
                op.matvec = counter.wrap(op.matvec)
                res = he.lanczos(op, k=1, which="LA", seed=seed, **kw)
                return np.sort(res.eigenvalues.detach().double().numpy())[::-1], counter.n
            return run

        methods["hessian-eigenthings@defaults"] = (eigenthings_at(), "lanczos(k=1, which='LA'): tol=1e-4")
        methods["hessian-eigenthings@tol=1e-3"] = (eigenthings_at(tol=1e-3), "tol=1e-3")
    if "curvlinops" in peers:
        cl = peers["curvlinops"]
        methods["curvlinops@defaults"] = (lambda m, d, s: run_curvlinops(m, d, 1, 0, s, cl=cl),
                                          "scipy eigsh on its operator: tol=0 (machine precision)")
        methods["curvlinops@tol=1e-3"] = (lambda m, d, s: run_curvlinops(m, d, 1, 1e-3, s, cl=cl),
                                          "eigsh tol=1e-3")
    return methods


def bench_defaults(name, model, data, ref_vals, peers, records, seeds):
    """λ_max with every library at its defaults (and at its documented tolerance for 1e-3):
    no setting is searched against the known answer. Medians over ``seeds`` of products and
    seconds, interleaved with the order rotated; the largest relative error."""
    ref = ref_vals[:1]
    methods = default_methods(peers)
    for method, (run, _) in methods.items():  # warm-up
        run(model, data, seeds[0])
    results = {m: [] for m in methods}
    for rep, seed in enumerate(seeds):
        order = list(methods)[rep % len(methods):] + list(methods)[:rep % len(methods)]
        for method in order:
            t = time.perf_counter()
            vals, products = methods[method][0](model, data, seed)
            results[method].append((time.perf_counter() - t, products, rel_error(vals, ref)))
    for method, runs in results.items():
        err = max(r[2] for r in runs)
        records.append(record(name, "lambda_max@defaults", method,
                              statistics.median(r[1] for r in runs),
                              statistics.median(r[0] for r in runs), err,
                              methods[method][1] + ("" if err <= TOL else " (error above 1e-3)")))
        log(f"  {name} defaults {method}: {records[-1]['products']} products, error {err:.1e}")


# --------------------------------------------------------------------------------------------
# trace
# --------------------------------------------------------------------------------------------

def trace_methods(peers: dict) -> Dict[str, Callable]:
    """name -> f(model, data, budget, seed) -> (estimate, products)."""

    def flatness_trace(model, data, budget, seed):
        H = operators.HessianOperator(model, LOSS, data)
        est = curvature.hessian_trace(model, LOSS, data, num_matvecs=budget, seed=seed, operator=H)
        return est, H.products

    methods = {"flatness": flatness_trace}
    if "pyhessian" in peers:
        ph = peers["pyhessian"]

        def pyhessian_trace(model, data, budget, seed):
            with pyhessian_counted(ph) as counter:
                torch.manual_seed(seed)
                try:
                    samples = pyhessian_object(ph, model, data).trace(maxIter=budget,
                                                                      tol=float("-inf"))
                finally:
                    clear_grads(model)
            return float(np.mean(samples)), counter.n

        methods["pyhessian"] = pyhessian_trace
    if "curvlinops" in peers:
        cl = peers["curvlinops"]

        def curvlinops_trace(fn, multiple):
            def run(model, data, budget, seed):
                H = curvlinops_operator(cl, model, data)
                counter = Counter()
                H._matmat = counter.wrap(H._matmat, lambda X: X[0].shape[-1])
                torch.manual_seed(seed)
                return float(fn(H, budget - budget % multiple)), counter.n
            return run

        methods["curvlinops-xtrace"] = curvlinops_trace(cl.xtrace, 2)
    return methods


def bench_trace(name, model, data, exact, peers, records, reps, budgets, skip=()):
    methods = {m: f for m, f in trace_methods(peers).items() if m not in skip}
    # flatness's exact trace for piecewise-linear networks spends no products and needs no seed
    out = timed({"flatness-exact": lambda: curvature.hessian_trace(model, LOSS, data,
                                                                   method="exact")}, 3)
    seconds, value = out["flatness-exact"]
    for budget in budgets:
        records.append(record(name, f"trace@{budget}", "flatness-exact", 0, seconds,
                              abs(value - exact) / abs(exact),
                              "method='exact': Gauss-Newton diagonal, no products"))
    for budget in budgets:
        runs = {m: [] for m in methods}
        for fn in methods.values():  # warm-up
            fn(model, data, budget, 10_000)
        for rep in range(reps):
            order = list(methods)[rep % len(methods):] + list(methods)[:rep % len(methods)]
            for method in order:
                t = time.perf_counter()
                est, products = methods[method](model, data, budget, rep)
                runs[method].append((time.perf_counter() - t, products, est))
        for method, rs in runs.items():
            errs = np.array([(r[2] - exact) / exact for r in rs])
            records.append(record(name, f"trace@{budget}", method,
                                  statistics.median(r[1] for r in rs),
                                  statistics.median(r[0] for r in rs),
                                  float(np.sqrt(np.mean(errs ** 2))),
                                  f"RMS over {reps} seeds"))
        log(f"  {name} trace@{budget}: " + ", ".join(
            f"{r['method']} {r['rel_error']:.3f}" for r in records
            if r["model"] == name and r["task"] == f"trace@{budget}"))


# --------------------------------------------------------------------------------------------
# dense spectrum and single products
# --------------------------------------------------------------------------------------------

def timed(fns: Dict[str, Callable], repeats: int, warmup: Optional[Dict[str, Callable]] = None
          ) -> Dict[str, Tuple[float, object]]:
    """Median seconds of each function over ``repeats`` interleaved runs after a warm-up."""
    for fn in (warmup or fns).values():
        fn()
    times: Dict[str, list] = {m: [] for m in fns}
    last = {}
    for rep in range(repeats):
        order = list(fns)[rep % len(fns):] + list(fns)[:rep % len(fns)]
        for m in order:
            t = time.perf_counter()
            last[m] = fns[m]()
            times[m].append(time.perf_counter() - t)
    return {m: (statistics.median(ts), last[m]) for m, ts in times.items()}


def bench_dense(name, model, data, ref_vals, peers, records, repeats):
    P = sum(p.numel() for p in model.parameters())

    def flatness_dense():
        D = operators.dense_hessian(model, LOSS, data, dtype=torch.float32)
        return torch.linalg.eigvalsh(D.double())

    fns = {"flatness": flatness_dense}
    warm = {"flatness": lambda: operators.HessianOperator(model, LOSS, data)
            @ torch.eye(P)[:, :32]}
    if "curvlinops" in peers:
        cl = peers["curvlinops"]

        def curvlinops_dense():
            H = curvlinops_operator(cl, model, data)
            eye = torch.eye(P)
            D = torch.cat([H @ eye[:, i:i + 128] for i in range(0, P, 128)], 1).double()
            return torch.linalg.eigvalsh((D + D.T) / 2)

        fns["curvlinops"] = curvlinops_dense
        warm["curvlinops"] = lambda: curvlinops_operator(cl, model, data) @ torch.eye(P)[:, :32]
    out = timed(fns, repeats, warm)
    spectra = {}
    for method, (seconds, evals) in out.items():
        top = evals.numpy()[::-1][:len(ref_vals)]
        spectra[method] = evals
        records.append(record(name, "dense_spectrum", method, P, seconds,
                              rel_error(top, ref_vals), "float32 products, float64 eigh"))
        log(f"  {name} dense_spectrum {method}: {seconds:.1f} s")
    return spectra["flatness"]


def bench_hvp(name, model, data, peers, records, repeats):
    from torch.func import functional_call, grad, jvp, vmap

    P = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    v, V8 = torch.randn(P, generator=g), torch.randn(P, 8, generator=g)
    H = operators.HessianOperator(model, LOSS, data)
    graph = H._graphs[0]
    fns = {"flatness": lambda: H @ v,
           "flatness-vmap8": lambda: torch.autograd.grad(graph, H.params, V8.T.contiguous(),
                                                        retain_graph=True, is_grads_batched=True)}
    X, y = data
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = tuple(p.detach() for p in model.parameters())

    def split(flat):
        out, o = [], 0
        for s in shapes:
            out.append(flat[o:o + math.prod(s)].view(s))
            o += math.prod(s)
        return tuple(out)

    def loss_of(*params):
        return LOSS(functional_call(model, dict(zip(names, params)), (X,)), y)

    def fwd_over_rev(vec):
        return jvp(grad(loss_of, argnums=tuple(range(len(names)))), theta, split(vec))[1]

    fns["torch.func-fwd-over-rev"] = lambda: fwd_over_rev(v)
    fns["torch.func-fwd-over-rev-vmap8"] = lambda: vmap(fwd_over_rev, in_dims=1)(V8)
    if "pyhessian" in peers:
        ph = peers["pyhessian"]
        obj = pyhessian_object(ph, model, data)
        vl = list(split(v))
        hvp = sys.modules["pyhessian.utils"].hessian_vector_product
        fns["pyhessian"] = lambda: hvp(obj.gradsH, obj.params, vl)
    if "hessian-eigenthings" in peers:
        he = peers["hessian-eigenthings"]
        op = he.HessianOperator(model, [data], he.supervised_loss(LOSS))
        fns["hessian-eigenthings"] = lambda: op.matvec(v)
    if "curvlinops" in peers:
        C = curvlinops_operator(peers["curvlinops"], model, data)
        fns["curvlinops"] = lambda: C @ v
        fns["curvlinops-vmap8"] = lambda: C @ V8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = timed(fns, repeats)
    clear_grads(model)
    for method, (seconds, _) in out.items():
        n = 8 if method.endswith("vmap8") else 1
        setting = {"flatness": "double backward, retained graph",
                   "flatness-vmap8": "double backward, retained graph, is_grads_batched",
                   "pyhessian": "double backward, retained graph",
                   "hessian-eigenthings": "forward + double backward per product",
                   "curvlinops": "forward-over-reverse (torch.func)",
                   "curvlinops-vmap8": "forward-over-reverse, vmap"}.get(method, method)
        records.append(record(name, "hvp", method, n, seconds, None, setting))
    log(f"  {name} hvp: " + ", ".join(f"{m} {s * 1e3:.1f} ms" for m, (s, _) in out.items()))


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------

def record(model, task, method, products, seconds, rel_err, setting=""):
    return {"model": model, "task": task, "method": method,
            "products": None if products is None else int(round(products)),
            "seconds": float(seconds),
            "rel_error": None if rel_err is None else float(rel_err), "setting": setting}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# Curvature benchmark", "",
             f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores, "
             f"{m['torch_threads']} torch threads), torch {m['torch']}; load average "
             f"{result['load_before']} before, {result['load_after']} after. "
             f"Command: `{result['command']}`.", "",
             "| model | task | method | products | seconds | ms/product | rel. error | setting |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in result["records"]:
        per = (f"{1e3 * r['seconds'] / r['products']:.1f}" if r["products"] else "")
        err = "" if r["rel_error"] is None else f"{r['rel_error']:.1e}"
        lines.append(f"| {r['model']} | {r['task']} | {r['method']} | {r['products']} | "
                     f"{r['seconds']:.3f} | {per} | {err} | {r['setting']} |")
    if result["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def output_path(out: Optional[Path], quick: bool) -> Path:
    """Where the JSON results go: ``out`` when given, else the committed full-run results, or
    ``_build/benchmarks/`` for a ``--quick`` run, which must never replace them.

    >>> output_path(None, quick=True) == QUICK_OUT != DEFAULT_OUT == output_path(None, quick=False)
    True
    >>> output_path(Path("x.json"), quick=True)
    PosixPath('x.json')
    """
    if out is not None:
        return Path(out)
    return QUICK_OUT if quick else DEFAULT_OUT


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the MLP, fewer repetitions")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON output path (default {DEFAULT_OUT.relative_to(DEFAULT_OUT.parents[2])}; "
                             f"with --quick {QUICK_OUT.relative_to(QUICK_OUT.parents[2])})")
    parser.add_argument("--models", nargs="*", default=None, help=f"subset of {list(MODELS)}")
    parser.add_argument("--tasks", nargs="*", default=None, choices=TASKS,
                        help="run only these tasks (default: all)")
    parser.add_argument("--keep-others", action="store_true",
                        help="keep the records of other models and tasks already in --out")
    parser.add_argument("--trace-reps", type=int, default=None,
                        help="repetitions per trace budget (default 20; 5 with --quick)")
    args = parser.parse_args(argv)
    names = args.models or (["mlp"] if args.quick else list(MODELS))
    tasks = set(args.tasks or TASKS)
    reps = args.trace_reps or (5 if args.quick else 20)
    repeats = 3
    peers, notes = load_peers()
    for n in notes:
        log(n)
    records: List[dict] = []
    checks: Dict[str, float] = {}
    load_before = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    for name in names:
        spec, channels = MODELS[name]
        log(f"{name}: training (cached) ...")
        model, hist = load_or_train(model_config(spec, channels), progress=False)
        model.eval()
        data = mnist1d(channels=channels).train
        P = sum(p.numel() for p in model.parameters())
        t = time.perf_counter()
        H64 = operators.HessianOperator(model, LOSS, data, dtype=torch.float64)
        from scipy.sparse.linalg import eigsh
        ref = np.sort(eigsh(H64.to_scipy(), k=5, which="LA", tol=1e-10, ncv=40,
                            v0=np.random.default_rng(123).standard_normal(P))[0])[::-1]
        del H64
        log(f"  {name}: P={P}, train acc {hist['train_acc'][-1]:.3f}, reference top-5 "
            f"{np.round(ref, 4).tolist()} ({time.perf_counter() - t:.1f} s)")
        checks[f"{name}_parameters"] = P
        checks[f"{name}_lambda_max"] = float(ref[0])
        if "hvp" in tasks:
            bench_hvp(name, model, data, peers, records, 5)
        small = P < 50_000
        max_products, power_iters = (3000, 1000) if small else (600, 120)
        if "lambda_max" in tasks:
            bench_eigen(name, model, data, ref, peers, "lambda_max", 1, records, max_products, SEEDS,
                        power_iters)
        if "defaults" in tasks:
            bench_defaults(name, model, data, ref, peers, records, SEEDS)
        if not args.quick and "top5" in tasks:
            bench_eigen(name, model, data, ref, peers, "top5", 5, records, max_products, SEEDS,
                        power_iters)
        exact = None
        if "trace" not in tasks and not (name == "cnn" and "dense" in tasks):
            continue
        if name == "cnn":
            evals = bench_dense(name, model, data, ref, peers, records, repeats)
            exact = float(evals.sum())
            via_ggn = piecewise_linear_trace(model, LOSS, data)
            checks["cnn_trace_dense"] = exact
            checks["cnn_trace_gauss_newton_diagonal"] = via_ggn
            if abs(via_ggn - exact) > 1e-4 * abs(exact):
                notes.append(f"the Gauss-Newton-diagonal trace {via_ggn:.6g} differs from the "
                             f"dense trace {exact:.6g}")
        else:
            exact = piecewise_linear_trace(model, LOSS, data)
        checks[f"{name}_trace"] = exact
        if "trace" in tasks:
            bench_trace(name, model, data, exact, peers, records, reps,
                        BUDGETS[:2] if args.quick else BUDGETS,
                        skip=() if small else ("curvlinops-xtrace",))
    notes += [
        "lambda_max/top5: each method's setting is the loosest on its ladder that reaches 1e-3 "
        "relative error from all three start seeds; products and seconds are medians over the "
        "seeds (setup included: forward pass and gradient graph), rel_error the largest.",
        "PyHessian is run on the full batch with cuda=False and maxIter=1000 per eigenvalue "
        "(120 on the wide MLP, to bound the run time); its .grad is "
        "cleared before each construction. curvlinops operators are built with "
        "check_deterministic=False. hessian-eigenthings re-runs the forward pass per product.",
        "trace@B: RMS relative error over the seeds against the exact trace; flatness's "
        "estimator is hessian_trace's default (Krylov deflation + projected Hutchinson), "
        "PyHessian's is plain Hutchinson with its tolerance disabled; curvlinops' XTrace (which "
        "in our tests was as accurate as or better than its Hutch++ at every budget) uses the "
        "largest even number of products within the budget; it is left out on the wide MLP to "
        "bound the run time.",
        "hvp: seconds per call; products is the number of vectors in the call.",
        "lambda_max@defaults: every library as a user calls it for the top eigenvalue, nothing "
        "searched against the reference: its defaults, and the tolerance its documentation gives "
        "for 1e-3 where that differs (hessian-eigenthings and curvlinops; PyHessian's default is "
        "tol=1e-3). hessian-eigenthings' lanczos runs 2k steps when max_iter is not given (2 "
        "for k=1), whatever its tol. which='LA' throughout.",
    ]
    result = {"command": "python -m benchmarks.curvature" + (" --quick" if args.quick else ""),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine_info(OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "")), "peers": peer_versions(peers),
              "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
              "total_seconds": round(time.perf_counter() - start, 1), "tolerance": TOL,
              "checks": checks, "notes": notes, "records": records}
    out = output_path(args.out, args.quick)
    if args.keep_others and out.exists():
        old = json.loads(out.read_text())
        ran = {(r["model"], r["task"]) for r in records}
        kept = [r for r in old["records"] if (r["model"], r["task"]) not in ran]
        result["records"] = kept + records
        result["checks"] = {**old.get("checks", {}), **checks}
        result["notes"] = list(dict.fromkeys(old.get("notes", []) + notes))
        result["command"] = "python -m benchmarks.curvature"
        result["total_seconds"] = round(result["total_seconds"] + old.get("total_seconds", 0), 1)
        result["load_before"] = old.get("load_before", load_before)
    write_results(out, result, markdown)
    log(f"wrote {out} and {out.with_suffix('.md')} in {result['total_seconds']} s")
    return result


if __name__ == "__main__":
    main()
