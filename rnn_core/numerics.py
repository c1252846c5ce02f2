"""Exact float32 numerics on CUDA: no TF32 in cuDNN RNNs or cuBLAS matmuls, so ``forward`` == ``step``.

On CUDA, cuDNN runs an RNN's whole-sequence forward in TF32 by default while single cell steps run their
matmuls in full float32 (TF32 keeps 10 mantissa bits: errors up to ~1e-3). :func:`exact_numerics` turns TF32
off within a block (the model enters it itself in eval mode on CUDA); :func:`set_exact_numerics` does it once
for the whole process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def set_exact_numerics() -> None:
    """Process-wide: no TF32 in cuDNN (RNNs) or cuBLAS (matmuls), so ``forward`` == ``step`` on CUDA too.

    Sets ``torch.backends.cudnn.allow_tf32 = False`` and ``torch.backends.cuda.matmul.allow_tf32 = False``
    (the legacy setters: they leave a state that both the legacy and the newer ``fp32_precision`` API can
    read). Call once at the start of a serving or evaluation process that runs models on a GPU (no effect on
    CPU); then the per-call :func:`exact_numerics` that the model enters changes nothing, which also makes it
    safe with several threads. Costs some speed on Ampere+ GPUs; training does not need it.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


# torch >= 2.9 has per-op ``fp32_precision`` flags; once they are used, reading the legacy allow_tf32 flags
# raises, so the context below reads and restores the new ones where they exist.
_PER_OP_PRECISION = hasattr(torch.backends, "fp32_precision")


def _effective_precision(*chain: str) -> str:
    """The first set value along an op -> backend -> global ``fp32_precision`` chain ("none" = inherit)."""
    return next((value for value in chain if value != "none"), "ieee")


@contextlib.contextmanager
def exact_numerics() -> Iterator[None]:
    """Within the block: cuDNN RNNs and cuBLAS matmuls in full float32 (no TF32); flags restored after.

    :class:`StreamingModel` enters it itself for ``forward``/``step`` in eval mode on CUDA. Flags that are
    already exact are not touched, so after :func:`set_exact_numerics` it changes nothing.
    """
    b = torch.backends
    restore: list[tuple[object, str, object]] = []
    if _PER_OP_PRECISION:
        rnn = b.cudnn.rnn.fp32_precision
        matmul = b.cuda.matmul.fp32_precision
        if _effective_precision(rnn, b.cudnn.fp32_precision, b.fp32_precision) != "ieee":
            restore.append((b.cudnn.rnn, "fp32_precision", rnn))
        if _effective_precision(matmul, b.fp32_precision) != "ieee":
            restore.append((b.cuda.matmul, "fp32_precision", matmul))
        exact: object = "ieee"
    else:  # older torch: the legacy flags only
        if b.cudnn.allow_tf32:
            restore.append((b.cudnn, "allow_tf32", True))
        if b.cuda.matmul.allow_tf32:
            restore.append((b.cuda.matmul, "allow_tf32", True))
        exact = False
    for owner, name, _ in restore:
        setattr(owner, name, exact)
    try:
        yield
    finally:
        for owner, name, value in reversed(restore):
            setattr(owner, name, value)
