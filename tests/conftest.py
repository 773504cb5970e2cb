import os

import pytest
import torch

os.environ.setdefault("FLATNESS_PROGRESS", "0")


@pytest.fixture
def tiny():
    """A tiny ReLU MLP with data: small enough for dense float64 oracles."""
    torch.manual_seed(0)
    from flatness.models import mlp

    model = mlp(5, (6,), 3)
    X = torch.randn(40, 5)
    y = torch.randint(0, 3, (40,))
    return model, torch.nn.CrossEntropyLoss(), (X, y)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
