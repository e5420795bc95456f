"""Where and how a command runs the network.

:func:`inference_device`: the device ``forecast``, ``evaluate`` and ``calibrate`` run the
network on (``--device``; by default a CUDA GPU where there is one, else the CPU).

:func:`keep_freed_memory`: by default glibc hands every allocation above 32 MB straight to
the kernel (``mmap``) and gives it back when freed (``munmap``), so each large tensor of a
forecast (a 12-lead, 25-bin distribution of a 256 x 256 px domain is 79 MB) is new memory
whose every page faults on first touch. Serving them from the heap and keeping freed memory
for the next one (PyTorch's CPU tuning guide recommends an allocator that does, such as
jemalloc) halves the network's part of a one-pass forecast and makes a CPU training step of
``configs/radar.yaml`` 17 % shorter on the machine of ``BENCHMARKS.md``. ``metnet`` does it
for the commands that run the network. The cost: the process keeps up to
:data:`KEEP_BYTES` of freed memory instead of returning it, after its peak.
"""

from __future__ import annotations

import ctypes
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: glibc's ``mallopt`` parameters (``<malloc.h>``).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
#: Freed memory at the top of the heap kept for reuse before it is returned to the system.
KEEP_BYTES = 2**30


def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and keep up to :data:`KEEP_BYTES` of freed
    memory for reuse, for the rest of this process (and the processes it forks).

    Returns:
        whether it took effect: True with glibc (Linux), False elsewhere (another C
        library keeps its own policy).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))


def inference_device(spec: str = "auto") -> torch.device:
    """The device named by ``spec``: ``auto`` (the first CUDA GPU where there is one, else
    the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Raises:
        ValueError: another name, or a GPU this machine does not have.
    """
    import torch  # here, not at module level: `metnet --help` does not need it

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {spec}: not one of auto, cpu, cuda, cuda:N, mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: this machine has no CUDA GPU that torch can use "
                         "(use --device cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {spec}: this machine has {torch.cuda.device_count()} "
                         "CUDA GPU(s)")
    if device.type == "mps" and (not torch.backends.mps.is_available() or device.index):
        raise ValueError(f"--device {spec}: no such MPS device on this machine")
    return device
