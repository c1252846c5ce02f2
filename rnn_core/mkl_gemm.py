"""The float32 matrix product of the MKL that torch's CPU build carries, callable from compiled loops.

A scorer steps a batch in chunks of a few hundred keys, and each chunk needs two small products (the gate
pre-activations of the inputs and of the states). Through ``torch.addmm`` each costs a dispatch of ~15-30
µs on top of the product itself, as much as a 256 x 64 x 192 product takes: a 4,096-event batch spent a
third of its step in dispatch. MKL's own ``sgemm`` called from inside the compiled chunk loop costs none
of that, runs the same code torch would have run, and under the same thread settings
(``torch.set_num_threads`` sets MKL's): the chunk loop's products got ~1.6x faster, with equal results.

The symbol is looked up in torch's library (``libtorch_cpu``, where the x86-64 Linux and Windows wheels link
MKL statically and export its Fortran ``sgemm_``) and registered with LLVM under its own name, so compiled
loops that call it stay cacheable on disk. Builds without it (macOS, aarch64, a torch built on another BLAS)
leave :data:`AVAILABLE` False, and callers keep their ``torch.addmm`` path: nothing depends on MKL.
``RNNSTREAM_MKL=0`` in the environment does the same where it is found (to compare the two paths, or to
step around a broken MKL); Ray workers inherit it from the process that starts them.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import torch
from llvmlite import binding as llvm
from numba import types

_SYMBOL = "rnnstream_mkl_sgemm"  # what compiled code calls; bound to MKL's sgemm_ at import


def _find_sgemm() -> int | None:
    """The address of MKL's Fortran ``sgemm_`` in torch's CPU library, or None where it has none."""
    lib_dir = Path(torch.__file__).parent / "lib"
    names = {"win32": "torch_cpu.dll", "darwin": "libtorch_cpu.dylib"}
    path = lib_dir / names.get(sys.platform, "libtorch_cpu.so")
    if not torch.backends.mkl.is_available() or not path.exists():
        return None
    try:
        fn = ctypes.CDLL(str(path)).sgemm_  # already loaded by ``import torch``: this only finds it
    except (OSError, AttributeError):
        return None
    return ctypes.cast(fn, ctypes.c_void_p).value


def _register() -> bool:
    if os.environ.get("RNNSTREAM_MKL", "1").strip() == "0":
        return False
    address = _find_sgemm()
    if address is None:
        return False
    llvm.add_symbol(_SYMBOL, address)
    return True


AVAILABLE: bool = _register()
"""Whether compiled code may call :data:`sgemm` (it fails to link where this is False)."""

sgemm = types.ExternalFunction(_SYMBOL, types.void(*([types.voidptr] * 13)))
"""MKL's Fortran ``sgemm_`` as compiled code calls it (13 pointers; see :func:`.gru_kernels.matmul_into`)."""
