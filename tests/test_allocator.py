"""flatprep.allocator: freed memory is reused by the next big array."""

from __future__ import annotations

import subprocess
import sys

import pytest

_CHILD = """
import sys
import numpy as np
from flatprep.allocator import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
def minor_faults():
    return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[7])
for _ in range(2):  # the second round reuses what the first freed
    before = minor_faults()
    a = np.ones(64 * 2**20 // 8)  # 64 MB, above glibc's largest default mmap threshold
    del a
print(minor_faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc page-fault counters")
def test_a_second_big_array_reuses_the_pages_of_the_first():
    def faults(mode):
        done = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True)
        return int(done.stdout)

    assert faults("retain") < faults("default") / 10  # 64 MB is ~16,000 pages (or 32 huge pages)
