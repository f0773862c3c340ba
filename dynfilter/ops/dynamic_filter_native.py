"""The native CPU backend of the dynamic filter: C++ loops compiled on first use where a compiler exists.

``csrc/dynamic_filter.cpp`` is plain C++ with a C ABI (no torch headers), so one ``c++ -O3 -fopenmp``
call builds it in about a second; the library is cached on disk, keyed by the source, the compiler
and the CPU, and loaded with :mod:`ctypes`. Its OpenMP regions run on the thread pool torch already
uses (same ``libgomp`` soname), with ``torch.get_num_threads()`` threads.

Policy (see :func:`kernel`):

* contiguous-able CPU float32, float64 or bfloat16 inputs of one dtype use the native kernels;
* a cached library is loaded whatever the size, but a *build* is only started for calls with at
  least :data:`BUILD_THRESHOLD` multiply-adds, so the first call of a small model never waits for
  a compiler;
* no compiler, a failed build (warned once) or ``DYNFILTER_NATIVE=0`` mean the eager
  backend (:mod:`.dynamic_filter_eager`) runs instead -- same results to rounding.

One pass per row block: the kernels are read (or their gradient written) once, front to back, while the
accumulator stays in cache.

Environment: ``DYNFILTER_NATIVE=0`` disables the native path, ``DYNFILTER_CACHE_DIR`` moves the cache
(default ``$XDG_CACHE_HOME/dynfilter`` or ``~/.cache/dynfilter``), ``CXX`` picks the compiler.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Iterator

import torch

from .backend import OPS, KernelFn, switched_on

__all__ = ["kernel", "fused_library", "FusedKernels", "status", "disabled", "BUILD_THRESHOLD", "PARALLEL_THRESHOLD", "SOURCE"]

SOURCE = Path(__file__).resolve().parent / "csrc" / "dynamic_filter.cpp"
# Below about a million multiply-adds the eager path takes a millisecond or two; a build is not worth it.
BUILD_THRESHOLD = 1 << 20
# Multiply-adds below which the native kernels run on the calling thread alone.
PARALLEL_THRESHOLD = 1 << 17
_ABI_VERSION = 2
_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16"}
# Flag sets tried in order: the first that compiles wins (a compiler may lack OpenMP or -march=native).
_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-fopenmp"],
    ["-O3", "-march=native", "-Wno-unknown-pragmas"],
    ["-O3", "-Wno-unknown-pragmas"],
)

_lock = threading.Lock()


class _State:
    lib: ctypes.CDLL | None = None  # the loaded library
    compiler: str | None = None
    path: Path | None = None  # where the build for this source, compiler and CPU is cached
    failed = False  # no compiler, or a failed build or load: do not try again in this process
    reason = "not loaded yet"


_state = _State()
_disabled_depth = 0


def _enabled() -> bool:
    return _disabled_depth == 0 and switched_on("DYNFILTER_NATIVE")


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block the dynamic filter uses the eager backend on CPU (for tests and benchmarks)."""
    global _disabled_depth
    _disabled_depth += 1
    try:
        yield
    finally:
        _disabled_depth -= 1


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cache_dir() -> Path:
    if os.environ.get("DYNFILTER_CACHE_DIR"):
        return Path(os.environ["DYNFILTER_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dynfilter"


def _cpu_signature() -> str:
    # -march=native code must not be reused on another CPU sharing the cache (e.g. an NFS home).
    flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                flags += line
    return f"{platform.machine()}|{flags}"


def _library_path(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(
        SOURCE.read_bytes() + repr((version, _FLAG_SETS, _cpu_signature(), _ABI_VERSION)).encode()
    ).hexdigest()[:16]
    return _cache_dir() / f"dynamic_filter-{key}.so"


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in _FLAG_SETS:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        cmd = [compiler, *flags, "-std=c++17", "-shared", "-fPIC", str(SOURCE), "-o", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if result.returncode == 0:
            os.replace(tmp, target)  # atomic: concurrent builders each install a complete file
            return
        Path(tmp).unlink(missing_ok=True)
        errors.append(f"{' '.join(cmd)}\n{result.stderr.strip()[-2000:]}")
    raise RuntimeError("\n\n".join(errors))


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    if lib.dynfilter_abi_version() != _ABI_VERSION:
        raise RuntimeError(f"{path} has ABI {lib.dynfilter_abi_version()}, expected {_ABI_VERSION}")
    for suffix in _DTYPES.values():
        for op in OPS:
            fn = getattr(lib, f"dynfilter_{op}_{suffix}")
            fn.restype = None
            fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 5 + [ctypes.c_int]
        pointers, tensors, ints = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64)
        tail = [ints, ints, ctypes.c_int64, ctypes.c_int]  # shape, dilations, their number, threads
        for direction, args in (("forward", [pointers] * 4 + [tensors]), ("backward", [tensors] + [pointers] * 8)):
            fn = getattr(lib, f"dynfilter_fused_{direction}_{suffix}")
            fn.restype = None
            fn.argtypes = args + tail
    return lib


def _library(build: bool) -> ctypes.CDLL | None:
    """The loaded library: loads a cached build, compiles one only if ``build``; never retries a failure."""
    if _state.lib is not None or _state.failed:
        return _state.lib
    with _lock:
        if _state.lib is not None or _state.failed:
            return _state.lib
        try:
            if _state.path is None:
                _state.compiler = _compiler()
                if _state.compiler is None:
                    _state.failed, _state.reason = True, "no C++ compiler found (set CXX)"
                    return None
                _state.path = _library_path(_state.compiler)
            if not _state.path.exists():
                if not build:
                    _state.reason = "not built yet (built on the first call large enough)"
                    return None
                _build(_state.compiler, _state.path)
            _state.lib, _state.reason = _load(_state.path), f"loaded {_state.path}"
        except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as exc:
            _state.failed, _state.reason = True, f"build or load failed: {exc}"
            warnings.warn(
                f"dynfilter: native CPU kernels unavailable, using the eager implementation ({exc})",
                RuntimeWarning,
                stacklevel=4,
            )
        return _state.lib


def status() -> str:
    """Why the native path is or is not in use, e.g. ``"loaded /root/.cache/dynfilter/….so"``."""
    if not _enabled():
        return "disabled (DYNFILTER_NATIVE=0 or dynfilter.ops.dynamic_filter_native.disabled())"
    return _state.reason


def kernel(op: str, a: torch.Tensor, b: torch.Tensor, kernel_size: int) -> KernelFn | None:
    """The native kernel for ``op`` on operands ``a`` and ``b``, or ``None`` where eager must run.

    Args:
        op (str): ``"forward"``, ``"grad_input"`` or ``"grad_kernels"``.
        a (Tensor[B, C, H, W]): first operand (``x`` or ``grad``); sets the size of the work.
        b (Tensor): second operand (``kernels`` or ``x``).
        kernel_size (int): ``k``.

    Returns:
        ``fn(a, b, out, kernel_size, dilation)`` writing into the contiguous ``out``, or ``None``.
    """
    if not _enabled() or a.device.type != "cpu" or b.device.type != "cpu" or a.dtype != b.dtype or a.dtype not in _DTYPES:
        return None
    lib = _library(build=a.numel() * kernel_size * kernel_size >= BUILD_THRESHOLD)
    if lib is None:
        return None
    fn = getattr(lib, f"dynfilter_{op}_{_DTYPES[a.dtype]}")
    # Waking a thread team costs more than small calls take (much more on a busy machine), as for torch's
    # own element-wise ops, which stay on one thread below a grain size.
    threads = torch.get_num_threads() if a.numel() * kernel_size * kernel_size >= PARALLEL_THRESHOLD else 1

    def run(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, kernel_size: int, dilation: int) -> None:
        bsz, c, h, w = a.shape
        a, b = a.contiguous(), b.contiguous()
        fn(a.data_ptr(), b.data_ptr(), out.data_ptr(), bsz * c, h, w, kernel_size, dilation, threads)

    return run


def _pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _int64s(values) -> ctypes.Array:
    return (ctypes.c_int64 * len(values))(*values)


class FusedKernels:
    """The fused kernel-generation + filter kernels of the library for one dtype (see :mod:`.fused_dynamic_filter`).

    Operands must be contiguous CPU tensors of that dtype; ``shape`` is ``(B, C, G, H, W, k)``; ``outs`` and
    ``grads`` hold one ``(B, C, H, W)`` tensor per dilation.
    """

    def __init__(self, lib: ctypes.CDLL, dtype: torch.dtype) -> None:
        self._forward = getattr(lib, f"dynfilter_fused_forward_{_DTYPES[dtype]}")
        self._backward = getattr(lib, f"dynfilter_fused_backward_{_DTYPES[dtype]}")

    def forward(self, x, guide, weight, bias, outs, shape, dilations, threads: int) -> None:
        """``outs[i] = filter(x, weight · guide + bias, dilations[i])``."""
        self._forward(x.data_ptr(), guide.data_ptr(), weight.data_ptr(), _pointer(bias), _pointers(outs),
                      _int64s(shape), _int64s(dilations), len(dilations), threads)

    def backward(self, grads, x, guide, weight, bias, gx, gguide, gweight, gbias, shape, dilations, threads: int) -> None:
        """Write the gradients that are not ``None``."""
        self._backward(_pointers(grads), x.data_ptr(), guide.data_ptr(), weight.data_ptr(), _pointer(bias), _pointer(gx),
                       _pointer(gguide), _pointer(gweight), _pointer(gbias), _int64s(shape), _int64s(dilations),
                       len(dilations), threads)


_fused: dict[torch.dtype, FusedKernels] = {}


def fused_library(a: torch.Tensor) -> FusedKernels | None:
    """The fused kernels for ``a``'s dtype on CPU, or ``None`` (disabled, no compiler, other device or dtype).

    Unlike :func:`kernel`, a build starts whatever the size: a model using the fused path calls it at every
    layer, and the eager alternative is a Python loop over blocks of rows.
    """
    if not _enabled() or a.device.type != "cpu" or a.dtype not in _DTYPES:
        return None
    lib = _library(build=True)
    if lib is None:
        return None
    if a.dtype not in _fused:
        _fused[a.dtype] = FusedKernels(lib, a.dtype)
    return _fused[a.dtype]
