"""Tests of flatness.cache: train once, load ever after; anything wrong on disk is retrained."""

import os
import subprocess
import sys
import time

import pytest
import torch

from flatness import cache as cache_module
from flatness.cache import cache_path, load_or_train, state_checksum
from flatness.training import CACHE_VERSION, TrainConfig

SMALL = TrainConfig(model={"name": "mlp", "input_dim": 40, "widths": [16], "num_classes": 10},
                    data={"name": "mnist1d", "n_train": 300, "n_test": 100},
                    lr=0.05, momentum=0.9, batch_size=32, epochs=3, seed=1)


def test_cache_round_trip(cache):
    model, hist = load_or_train(SMALL)
    path = cache_path(SMALL)
    assert path.exists() and hist["epochs"] == 3 and len(hist["train_acc"]) == 3
    stamp = path.stat().st_mtime_ns
    again, hist2 = load_or_train(SMALL)
    assert path.stat().st_mtime_ns == stamp  # not retrained
    assert hist2 == hist
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)
    assert not list(cache.glob("*.tmp"))
    blob = torch.load(path, weights_only=True)
    assert blob["checksum"] == state_checksum(model.state_dict(), hist)
    assert CACHE_VERSION >= 2  # files carry a checksum since version 2


def test_training_is_reproducible(cache, tmp_path):
    a, _ = load_or_train(SMALL)
    b, _ = load_or_train(SMALL, directory=tmp_path / "other")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_key_depends_on_every_field():
    assert SMALL.key() != SMALL.replace(lr=0.051).key()
    assert SMALL.key() != SMALL.replace(data={**SMALL.data, "seed": 1}).key()
    assert SMALL.key() != SMALL.replace(init=SMALL).key()
    assert SMALL.key() == TrainConfig(**{f: getattr(SMALL, f) for f in SMALL.__dataclass_fields__}).key()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_cache_is_retrained(cache, damage):
    load_or_train(SMALL)
    path = cache_path(SMALL)
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[: len(blob) // 2], "garbage": b"not a torch file",
                      "empty": b""}[damage])
    with pytest.warns(RuntimeWarning, match="retraining"):
        model, hist = load_or_train(SMALL)
    assert hist["epochs"] == 3
    torch.load(path, weights_only=True)  # rewritten, valid


def test_flipped_byte_in_tensor_data_is_retrained(cache):
    """Issue 10 #7: one flipped byte in a weight loaded silently (−9.4e-4 became −3.2e35)."""
    model, _ = load_or_train(SMALL)
    path = cache_path(SMALL)
    raw = bytearray(path.read_bytes())
    weight = model.state_dict()["0.weight"].contiguous()
    data = weight.reshape(-1).view(torch.uint8).numpy().tobytes()
    at = raw.find(data[:64])
    assert at >= 0 and raw.find(data[:64], at + 1) < 0  # the tensor's bytes, stored once
    raw[at + 3] ^= 0x40  # the exponent byte of the first float32 weight
    path.write_bytes(bytes(raw))
    damaged = torch.load(path, weights_only=True)["state_dict"]["0.weight"]
    assert not torch.equal(damaged, weight)  # torch.load itself does not notice
    with pytest.warns(RuntimeWarning, match="checksum"):
        again, _ = load_or_train(SMALL)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    torch.load(path, weights_only=True)


@pytest.mark.parametrize("change", ["shape", "missing"])
def test_state_dict_that_does_not_fit_is_retrained(cache, change):
    """Issue 10 #8: a well-formed file with the right config but a state dict of another
    model (the model definition changed without a version bump) crashed in load_state_dict."""
    model, hist = load_or_train(SMALL)
    path = cache_path(SMALL)
    state = dict(model.state_dict())
    if change == "shape":
        state["0.weight"] = torch.zeros(8, 40)
    else:
        del state["2.bias"]
    blob = {"config": SMALL.to_json(), "state_dict": state, "history": hist,
            "checksum": state_checksum(state, hist)}
    torch.save(blob, path)
    with pytest.warns(RuntimeWarning, match="retraining"):
        again, hist2 = load_or_train(SMALL)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    assert hist2["epochs"] == 3
    assert torch.load(path, weights_only=True)["state_dict"]["0.weight"].shape == (16, 40)


def test_stale_temporary_files_are_removed(cache):
    """Issue 10 #9: temporary files of a killed writer were never removed."""
    cache.mkdir(parents=True)
    key = SMALL.key()
    host = cache_module._host()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {
        "dead writer": f"{key}.pt.{host}.{dead.pid}.abc123.tmp",
        "old": f"{key}.pt.otherhost.1.abc123.tmp",
        "old, unnamed writer (the previous format)": f"{key}.ptq8z1.tmp",
        "live writer": f"{key}.pt.{host}.{os.getpid()}.abc123.tmp",
        "other host, recent": f"{key}.pt.otherhost.1.def456.tmp",
        "not ours": "notes.tmp",
    }
    for name in names.values():
        (cache / name).write_bytes(b"partial")
    hour_ago = time.time() - 2 * cache_module.STALE_AFTER
    for what in ("old", "old, unnamed writer (the previous format)"):
        os.utime(cache / names[what], (hour_ago, hour_ago))
    load_or_train(SMALL)
    left = {p.name for p in cache.glob("*.tmp")}
    assert left == {names["live writer"], names["other host, recent"], names["not ours"]}
    load_or_train(SMALL)  # loading cleans too
    assert {p.name for p in cache.glob("*.tmp")} == left


def test_target_accuracy_and_warm_start(cache):
    cfg = SMALL.replace(epochs=None, target_train_acc=0.5, max_epochs=50)
    _, hist = load_or_train(cfg)
    assert hist["reached_target"] and hist["train_acc"][-1] >= 0.5
    warm = SMALL.replace(init=SMALL.replace(epochs=1), epochs=1, batch_size=300)
    model, hist = load_or_train(warm)
    assert hist["total_steps"] == 1


def test_schedule_and_sharpness_tracking(cache):
    cfg = SMALL.replace(epochs=4, milestones=(2,), lr_factor=0.2, batch_factor=2,
                        track_sharpness_every=2)  # the cache drives curvature.SharpnessTracker
    _, hist = load_or_train(cfg)
    assert hist["batch_size"] == [32, 32, 64, 64]
    assert hist["lr"][2] == pytest.approx(0.01)
    assert [e for e, _ in hist["lambda_max"]] == [0, 2, 4]


def test_keys_of_existing_configurations_are_unchanged():
    """The fields added later (stopping rules, attack set, SAM) leave old keys as they were:
    these keys were computed before those fields existed."""
    from flatness.training import REFERENCE_MLP

    assert REFERENCE_MLP.key() == "1d66b0e83ba24a68261f"
    assert SMALL.key() == "a73b3edbb259654b517c"
    assert SMALL.replace(init=REFERENCE_MLP, device="cuda:1", track_sharpness_every=2,
                         milestones=(3, 5)).key() == "44057562b2003872124f"
    assert SMALL.replace(optimizer="adam", augment={"shift": 2}).key() == "9fa30c4ae90730fe8512"
    # the later fields enter the key when they differ from their defaults, also inside init
    assert SMALL.replace(attack_weight=0, sam_rho=0.05, plateau_rtol=1e-3).key() == SMALL.key()
    for change in (dict(target_train_loss=0.1, epochs=None), dict(plateau_patience=3, epochs=None),
                   dict(plateau_rtol=1e-2), dict(attack={"name": "digits"}),
                   dict(attack_weight=1.0), dict(sam_rho=0.1)):
        assert SMALL.replace(**change).key() != SMALL.key(), change
        assert SMALL.replace(init=SMALL.replace(**change)).key() != SMALL.replace(init=SMALL).key()


def test_old_history_gets_a_stop_reason(cache):
    """A file written before stop_reason existed is loaded with the reason filled in."""
    model, hist = load_or_train(SMALL)
    path = cache_path(SMALL)
    blob = torch.load(path, weights_only=True)
    del blob["history"]["stop_reason"]
    blob["checksum"] = state_checksum(blob["state_dict"], blob["history"])
    torch.save(blob, path)
    stamp = path.stat().st_mtime_ns
    _, old = load_or_train(SMALL)
    assert path.stat().st_mtime_ns == stamp  # loaded, not retrained
    assert old == hist and old["stop_reason"] == "epochs"
