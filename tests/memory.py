"""How much a step of a test raised this process's peak resident memory.

``getrusage().ru_maxrss`` only grows: once a test process has peaked high (an earlier test in the same
worker), a later step that allocates less than that peak reads as 0 however much it took. Linux resets
the high-water mark (VmHWM) to the current resident size when "5" is written to /proc/self/clear_refs,
so ``PeakGrowth`` starts each measurement from where the process is now.
"""
from __future__ import annotations

import re
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE).group(1))


class PeakGrowth:
    """``with PeakGrowth() as growth: ...`` then ``growth.mib``: the peak during the block above the
    resident memory at its start, in MiB."""

    def __enter__(self) -> PeakGrowth:
        CLEAR_REFS.write_text("5")  # VmHWM := VmRSS
        self.start, self.mib = _status_kib("VmRSS"), 0.0
        return self

    def __exit__(self, *exc_info) -> None:
        self.mib = (_status_kib("VmHWM") - self.start) / 1024
