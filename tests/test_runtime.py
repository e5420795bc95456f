"""Where and how commands run the network (:mod:`metnet.runtime`)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from metnet.runtime import inference_device

# Resident memory after a 256 MB array is freed, above that before it was made, in MB.
PROBE = """
import sys
import numpy as np
from metnet.runtime import keep_freed_memory

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

if sys.argv[1] == "keep" and not keep_freed_memory():
    sys.exit(3)  # not glibc
before = rss_mb()
block = np.ones(2**25)  # 256 MB, every page touched
del block
print(rss_mb() - before)
"""


def kept_mb(mode: str) -> float:
    """Run the probe in a new process (the setting lasts for the process)."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True)
    if out.returncode == 3:
        pytest.skip("glibc's mallopt is not available: the C library keeps its own policy")
    assert out.returncode == 0, out.stderr
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_a_freed_large_tensor_stays_in_the_process_for_the_next():
    """glibc's default returns a freed 256 MB block to the system (the next one faults in
    new pages); after keep_freed_memory the block stays for reuse."""
    assert kept_mb("keep") > 224
    assert kept_mb("default") < 32


def test_the_device_is_a_gpu_where_there_is_one_and_named_devices_are_checked():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert inference_device("auto").type == expected
    assert inference_device("cpu") == torch.device("cpu")
    for name in ("gpu0", "meta", "xpu"):
        with pytest.raises(ValueError, match=f"--device {name}: not one of auto, cpu"):
            inference_device(name)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU that torch can use"):
            inference_device("cuda:1")
    else:
        with pytest.raises(ValueError, match="CUDA GPU"):
            inference_device(f"cuda:{torch.cuda.device_count()}")
