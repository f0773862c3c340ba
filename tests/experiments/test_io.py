"""Crash-safe writes keep the permissions an ordinary write would give."""

from __future__ import annotations

import os
import stat

import pytest

from experiments._io import atomic_write


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        written = atomic_write(tmp_path / "atomic.txt", lambda p: p.write_text("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert not list(tmp_path.glob(".*.tmp"))
