"""Shared fixtures: every test starts from a fixed RNG state and leaves it as it found it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("DYNFILTER_TEST_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(autouse=True)
def _fixed_rng():
    state = torch.get_rng_state()
    torch.manual_seed(0)
    yield
    torch.set_rng_state(state)


@pytest.fixture
def shared_data() -> Path:
    """The offline benchmark images (``../shared/data``); tests needing them skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA.resolve()


@pytest.fixture
def one_thread():
    """Whole-model runs are hundreds of small ops; on shared cores each parallel region can stall for ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
