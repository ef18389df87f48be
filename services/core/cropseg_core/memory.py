"""Process memory: have glibc give large freed blocks back to the system.

By default glibc's threshold for serving an allocation with ``mmap`` rises with every large
block freed (up to 32 MiB), so after a few big images the arrays of the next ones come from the
heap and stay there when freed: a service that had handled one 40 MP upload held ~640 MiB idle,
and the next large request's peak came on top of it. With a fixed 1 MiB threshold every image-
sized array is mapped and unmapped on its own; the peak is what one request needs. Both calls
are process-wide and no-ops where libc is not glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 1 << 20

try:
    _GLIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
except OSError:
    _GLIBC = None


def release_large_allocations() -> None:
    """Serve allocations of 1 MiB and more with mmap, given back to the system when freed."""
    if _GLIBC is not None:
        _GLIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def trim_heap() -> None:
    """Return the heap's free pages (what smaller allocations left) to the system."""
    if _GLIBC is not None:
        _GLIBC.malloc_trim(0)
