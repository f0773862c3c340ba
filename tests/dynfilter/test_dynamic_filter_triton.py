"""The Triton kernels (CUDA's fast path) checked on the CPU through Triton's interpreter.

``TRITON_INTERPRET=1`` must be set before Triton compiles anything, so the checks run in a fresh
interpreter process; on a GPU, ``tests/dynfilter/test_cuda.py`` checks the compiled kernels.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent(
    """
    import torch
    from dynfilter.ops import dynamic_filter_triton as _triton
    from tests.dynfilter.naive import dynamic_filter_loop

    torch.manual_seed(0)
    worst = 0.0
    for k, d, shape in [(1, 1, (1, 2, 4, 3)), (3, 1, (2, 3, 7, 5)), (3, 3, (1, 2, 9, 11)), (5, 2, (2, 2, 6, 7)),
                        (3, 5, (1, 1, 4, 13))]:
        b, c, h, w = shape
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
            x = torch.randn(shape, dtype=torch.float64)
            kernels = torch.randn(b, c * k * k, h, w, dtype=torch.float64)
            g = torch.randn_like(x)
            # Truth from the naive loop: the filter, and its adjoints by autograd through the loop.
            xr, kr = x.clone().requires_grad_(), kernels.clone().requires_grad_()
            want_out = dynamic_filter_loop(xr, kr, k, d)
            want_gx, want_gk = torch.autograd.grad(want_out, (xr, kr), g)
            cases = (("forward", x, kernels, want_out), ("grad_input", g, kernels, want_gx), ("grad_kernels", g, x, want_gk))
            for op, a1, a2, want in cases:
                fn = _triton.kernel(op, a1.to(dtype), a2.to(dtype), k)
                assert fn is not None, op
                got = torch.full(want.shape, float("nan"), dtype=dtype)  # every element must be written
                fn(a1.to(dtype), a2.to(dtype), got, k, d)
                err = ((got.double() - want).abs().max() / want.abs().max()).item()
                assert err <= tol, (op, k, d, shape, dtype, err)
                worst = max(worst, err if dtype == torch.float64 else 0.0)
    print("ok", worst)
    """
)


def test_triton_kernels_match_the_naive_loop_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")


def test_triton_is_not_used_for_cpu_tensors_without_the_interpreter():
    import torch

    from dynfilter.ops import dynamic_filter_triton as _triton

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter is on in this process")
    x = torch.randn(1, 2, 5, 5)
    assert _triton.kernel("forward", x, torch.randn(1, 18, 5, 5), 3) is None
