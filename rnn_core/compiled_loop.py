"""One way to compile a NumPy loop with numba for every compiled loop of the project.

``@compiled()`` is ``numba.njit`` with the on-disk cache (a new process loads the machine code instead of
compiling it again: ~0.3 s instead of ~2 s) and without the GIL (a worker's network threads run meanwhile).
Where numba finds no writable cache folder (a read-only image without ``$XDG_CACHE_HOME``), the loop compiles
in each process instead of failing the import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numba import njit


def compiled(inline: str = "never", error_model: str = "python") -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(cache=True, nogil=True)``, or without the cache where no cache folder is writable.

    ``error_model="numpy"``: a float division by zero gives inf/nan instead of raising, which lets loops
    with a division vectorize (the check is a branch a element).
    """

    def compile_(fn: Callable[..., Any]) -> Any:
        options = {"nogil": True, "inline": inline, "error_model": error_model}
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(**options)(fn)

    return compile_
