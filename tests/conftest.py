"""Shared fixtures: sample photos, tiny generated images, a fast config."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data" / "samples"


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


def random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth-ish random uint8 image [h, w, 3]."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    return np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]


@pytest.fixture
def fast_overrides() -> dict:
    """A dream that takes well under a second per image on CPU."""
    return dict(model="bvlc_googlenet", layer="inception3b", octaves=2, iterations=2, max_side=64, jitter=4,
                batch_size=4)
