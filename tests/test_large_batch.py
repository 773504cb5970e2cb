"""Tests of flatness.large_batch: per-seed measurements and the large-batch chapter's claims."""

from __future__ import annotations

import numpy as np
import pytest

from flatness import large_batch


def test_seed_measurement_pairs_runs_by_seed():
    sb = [dict(seed=0, batch_size=64, m=1.0), dict(seed=0, batch_size=256, m=3.0),
          dict(seed=1, batch_size=64, m=4.0), dict(seed=2, batch_size=64, m=5.0)]
    lb = [dict(seed=0, m=4.0), dict(seed=1, m=2.0)]  # seed 2 has no LB run: left out
    assert large_batch.seed_values(sb, "m") == {0: 2.0, 1: 4.0, 2: 5.0}
    ratio = large_batch.seed_measurement("LB/SB", sb, lb, "m")
    assert ratio.estimate == (4.0 / 2.0 + 2.0 / 4.0) / 2 and ratio.n == 2 and ratio.unit == "seeds"
    assert ratio.interval == (0.5, 2.0)  # the bootstrap of two values spans them
    gap = large_batch.seed_measurement("SB − LB", sb, lb, "m", "difference")
    assert gap.estimate == ((2.0 - 4.0) + (4.0 - 2.0)) / 2
    alone = large_batch.seed_measurement("LB", [], lb[:1], "m", "large")
    assert alone.estimate == 4.0 and alone.interval is None and not alone.testable  # one seed
    with pytest.raises(ValueError, match="statistic"):
        large_batch.seed_measurement("x", sb, lb, "m", "mean")
    with pytest.raises(ValueError, match="no seed in common"):
        large_batch.seed_measurement("x", sb, [dict(seed=7, m=1.0)], "m")
    with pytest.raises(ValueError, match="'m'"):
        large_batch.seed_values([dict(seed=0)], "m")


def _cell(opt, lr, B, values, variant="plain", **extra):
    n = len(values["lambda_max"])
    return [dict(opt=opt, lr=lr, batch_size=B, seed=s, variant=variant, reached=True,
                 lambda_max_converged=1.0, **extra, **{k: v[s] for k, v in values.items()})
            for s in range(n)]


def _records(seeds=3, gap=0.05):
    """Synthetic runs of every cell the chapter's measurements use, with known answers."""
    rng = np.random.default_rng(0)
    kes = "keskar_full_0.001"
    n_test = 400
    base = rng.random((seeds, n_test)) < 0.65

    def runs(opt, lr, B, lam, acc_drop=0.0, variant="plain", late=None, precond=None):
        vals = {"lambda_max": [lam * (1 + 0.01 * s) for s in range(seeds)]}
        vals[kes] = [2 * v for v in vals["lambda_max"]]
        vals["keskar_full_0.0005"] = [v / 3.0 for v in vals[kes]]
        vals[kes + "_first"] = [0.4 * v for v in vals[kes]]
        correct = [base[s] & (rng.random(n_test) >= acc_drop) for s in range(seeds)]
        vals["test_correct"] = correct
        if late is not None:
            vals["lambda_late"] = [late] * seeds
            vals["eta_lambda_late"] = [lr * late] * seeds
        if precond is not None:
            vals["precond_lambda"] = [precond] * seeds
        return _cell(opt, lr, B, vals, variant)

    # λ_max = 1.9/η at every cell but SB (edge of stability), SB below it
    return (runs("sgd", 0.2, 64, 4.0, late=4.0) + runs("sgd", 0.2, 400, 9.5, acc_drop=gap, late=9.5)
            + runs("sgd", 0.5, 400, 3.8) + runs("sgd", 0.8, 256, 2.3) + runs("sgd", 0.8, 4000, 2.4)
            + runs("sgd", 0.2, 64, 4.2, variant="augmented") + runs("sgd", 0.2, 400, 9.0, variant="augmented")
            + runs("sgd", 0.2, 64, 4.0, variant="loss") + runs("sgd", 0.2, 400, 3.0, acc_drop=gap, variant="loss")
            + runs("adam", 2e-3, 256, 50.0) + runs("adam", 2e-3, 4000, 80.0, precond=19000.0))


def test_measurements_and_claims_on_synthetic_runs():
    from flatness.claims import HELD, NOT_HELD

    recs = _records()
    m = large_batch.large_batch_measurements(recs, one_rate=(0.8, 256, 4000))
    assert m["const-lam"].estimate == pytest.approx(np.mean([9.5 / 4.0] * 3))
    assert m["const-late"].estimate == pytest.approx(9.5 / 4.0)
    assert m["edge-lb"].estimate == pytest.approx(0.2 * 9.5)
    assert m["edge-ratio"].estimate == pytest.approx(4.0 / 9.5)
    assert m["kes-ratio"].estimate == pytest.approx(3.0)
    assert m["kes-first"].estimate == pytest.approx(0.4)
    assert m["adam-edge"].estimate == pytest.approx(19000.0 / large_batch.adam_stability_bound(2e-3))
    sb = [r["test_correct"] for r in recs if r["lr"] == 0.2 and r["batch_size"] == 64 and r["variant"] == "plain"]
    lb = [r["test_correct"] for r in recs if r["lr"] == 0.2 and r["batch_size"] == 400 and r["variant"] == "plain"]
    assert m["const-gap"].estimate == pytest.approx(np.mean(np.array(sb, float) - np.array(lb, float)))
    expected = {cid: HELD for cid in large_batch.LARGE_BATCH_CLAIMS}
    claims = large_batch.large_batch_claims(m, recs, expected)
    got = {c.id: c.outcome for c in claims}
    assert [c.id for c in claims] == list(large_batch.LARGE_BATCH_CLAIMS)
    assert got["lb-sharper"] == HELD and got["lb-gap"] == HELD and got["edge-of-stability"] == HELD
    assert got["yao-sharper"] == NOT_HELD  # 3.8 < 4.0
    assert got["adam-aeos"] == HELD and got["keskar-quadratic"] == NOT_HELD  # ratio 3, not 4 ± 0.5
    assert got["same-criterion"] == HELD
    assert got["lb-sharper-common-loss"] == NOT_HELD  # LB 3.0 < SB 4.0 at the common loss
    assert m["loss-lam"].estimate == pytest.approx(np.mean([3.0 / 4.0] * 3))
    missed = [dict(recs[0], reached=False)] + recs[1:]
    assert large_batch.large_batch_claims(m, missed, expected)[0].outcome == NOT_HELD
    with pytest.raises(ValueError, match="expected"):
        large_batch.large_batch_claims(m, recs, {"lb-gap": HELD})
    with pytest.raises(ValueError, match="compared"):
        large_batch.large_batch_claims(m, [], expected)


def test_paired_accuracy_gap_is_the_mean_difference_with_a_two_way_interval():
    rng = np.random.default_rng(1)
    S, n = 4, 2000
    a = rng.random((S, n)) < 0.7
    b = a & (rng.random((S, n)) >= 0.05)  # b loses about 5 % of a's correct answers
    m = large_batch.paired_accuracy_gap(list(a), list(b), "gap", n_resamples=1000)
    D = a.astype(float) - b.astype(float)
    assert m.estimate == pytest.approx(D.mean()) and m.n == S * n and m.low <= m.estimate <= m.high
    # the bootstrap spread of a mean of n·S paired differences is close to its standard error;
    # the seeds add their own variation, so the interval is at least the test-resampling one
    se = D.std() / np.sqrt(S * n)
    assert (m.high - m.low) / 2 > 0.8 * 1.96 * se
    same = large_batch.paired_accuracy_gap(list(a), list(a), "zero", n_resamples=200)
    assert same.estimate == 0.0 and same.interval == (0.0, 0.0)
    one = large_batch.paired_accuracy_gap(list(a[:1]), list(b[:1]), "one seed")
    assert one.estimate == pytest.approx(D[0].mean()) and one.interval is None and not one.testable
    with pytest.raises(ValueError, match="small, large"):
        large_batch.paired_accuracy_gap(list(a), list(b[:2]), "x")


def test_late_median_and_stop_epoch():
    h = {"epochs": 20, "lambda_max": [[0, 1.0], [10, 9.0], [16, 2.0], [18, 4.0], [20, 3.0]]}
    assert large_batch.late_median(h) == 3.0  # epochs 16, 18, 20
    assert large_batch.late_median(h, fraction=1.0) == 3.0
    assert large_batch.late_median({"epochs": 20, "lambda_max": [[0, 1.0], [5, 7.0]]}) == 7.0
    with pytest.raises(ValueError, match="fraction"):
        large_batch.late_median(h, fraction=0.0)
    with pytest.raises(ValueError, match="history"):
        large_batch.late_median({"epochs": 3})
    hist = {"epoch": [1, 2, 3, 4, 5, 6], "train_loss": [1.0, 0.6, 0.3, 0.2999, 0.2998, 0.1]}
    assert large_batch.stop_epoch(hist, target_loss=0.3) == 3
    assert large_batch.stop_epoch(hist, target_loss=0.01) is None
    assert large_batch.stop_epoch(hist, patience=2) == 5  # epochs 4, 5 improve by < 0.1 % on 0.3
    with pytest.raises(ValueError, match="exactly one"):
        large_batch.stop_epoch(hist)


def test_grid_exponents_recover_a_power_law_and_refuse_a_line():
    recs = [{"lr": e, "batch_size": B, "seed": s, "m": (1 + 0.05 * s) * e ** -1.0 * B ** 0.3}
            for e in (0.1, 0.2, 0.4) for B in (64, 256) for s in range(4)]
    out = large_batch.grid_exponents(recs, "m", n_resamples=200)
    # a per-seed constant factor leaves the exponents exact in every resample
    assert out["b"].estimate == pytest.approx(-1.0) and out["b"].interval == pytest.approx((-1.0, -1.0))
    assert out["c"].estimate == pytest.approx(0.3) and out["b+c"].estimate == pytest.approx(-0.7)
    line = [{"lr": 0.1 * k, "batch_size": 64 * k, "seed": 0, "m": 1.0} for k in (1, 2, 4)]
    with pytest.raises(ValueError, match="one line"):
        large_batch.grid_exponents(line, "m")


def test_preconditioned_sharpness_matches_the_dense_oracle():
    import torch
    from oracles import assert_unperturbed, oracle_hessian, snapshot

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    X, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    loss = torch.nn.CrossEntropyLoss()
    v = torch.rand(sum(p.numel() for p in model.parameters())) * 1e-2 + 1e-4
    snap = snapshot(model)
    got = large_batch.preconditioned_sharpness(model, loss, (X, y), v, eps=1e-8, tol=1e-6)
    assert_unperturbed(model, snap)
    H = oracle_hessian(model, loss, (X, y))
    d = (v.double().sqrt() + 1e-8).rsqrt()
    expected = torch.linalg.eigvalsh(d[:, None] * H * d[None, :]).max().item()
    assert got == pytest.approx(expected, rel=1e-4)
    assert large_batch.adam_stability_bound(0.01) == pytest.approx(3800.0)
    with pytest.raises(ValueError, match="second_moment"):
        large_batch.preconditioned_sharpness(model, loss, (X, y), v[:-1])


def test_independent_test_set_and_correctness():
    import torch
    from flatness.data import mnist1d

    X, y = large_batch.independent_test_set(200, seed=43)
    train = mnist1d().X_train
    assert X.shape == (200, 40) and not any(torch.equal(X[0], t) for t in train[:4000])
    with pytest.raises(ValueError, match="seed"):
        large_batch.independent_test_set(200, seed=42)
    net = torch.nn.Linear(40, 10)
    c = large_batch.correctness(net, (X, y), batch_size=64)
    with torch.no_grad():
        assert c.tolist() == (net(X).argmax(1) == y).tolist()




def test_adam_preconditioner_replays_the_cached_run(tmp_path):
    import torch
    from flatness import TrainConfig
    from flatness.cache import load_or_train

    cfg = TrainConfig(model={"name": "mlp", "input_dim": 40, "widths": [8], "num_classes": 10},
                      data={"name": "mnist1d", "n_train": 96, "n_test": 20}, optimizer="adam", lr=1e-2,
                      batch_size=32, epochs=3, seed=1)
    model, _ = load_or_train(cfg, directory=tmp_path, progress=False)
    net, v, scale = large_batch.adam_preconditioner(cfg, model)  # train's run is replayed exactly
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), model.parameters()))
    # the same run by hand: torch's Adam on train's batches; v̂ = v / (1 − β₂ᵗ), t = 9 steps
    assert scale == pytest.approx(1 - 0.9 ** 9) and bool((v > 0).all())
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="replay"):
        large_batch.adam_preconditioner(cfg, model)
    with pytest.raises(ValueError, match="Adam"):
        large_batch.adam_preconditioner(cfg.replace(optimizer="sgd"))
