"""What channel counts this CPU's ONNX Runtime kernels want, as a rule measured on real models.

ONNX Runtime runs convolutions in blocks of channels (its NCHWc layout: 8 channels with AVX2, 16
with AVX-512); a channel count off those blocks falls back to slower kernels and adds layout
reorders. Measured with ORT 1.32, 1 thread, batch 1, on a CPU with AVX2 and AVX-512
(``python -m benchmarks.rounding --rounds 30``: transformers' models at 224, random weights, a
uniform channel plan cutting half the MACs, dense and pruned timed in alternation), the speedup as
a share of the MAC cut with kept counts rounded to 8 / 1 / 16:

    MobileNetV2      0.81 / 0.46 / 0.96
    EfficientNet-B0  0.76 / 0.40 / 0.90
    RegNet           0.80 / 0.74 / 0.89

So AVX-512 takes 16 and AVX2 8. The built-in digits-resnet (32x32, 64-256 channels, where small
groups halve the multiple) is not hurt by 16: at a 2x MAC cut its ``auto`` plan under 16 ran 2.00x
faster than dense (0.98 of its cut) and under 8 1.86x (0.81 of a larger cut), as sums of per-node
median times (the profiler's, which leave out the waits for a core on a loaded machine); timed whole
on 2 threads in alternation, 0.98 against 0.85 of the cut. ARM's NEON kernels work on 4 floats. A
plan's ``round_to: auto`` (the default) resolves to ``channel_multiple()`` in the resolved plan
(core.prune.resolved), which also keeps small layers prunable (``group_multiple``).
"""
from __future__ import annotations

import functools
import platform

# Vector extension -> channel multiple, the first one the CPU has wins.
RULES = (("avx512f", 16), ("avx2", 8), ("asimd", 4), ("neon", 4))
FALLBACK = 1
# A group is rounded to a multiple only when it has at least this many multiples of channels. 2, not 4: under
# AVX-512, 4 sent EfficientNet-B0's many 16-63-channel groups to 8 and 4, and its auto plan turned 0.77 of a 2x
# MAC cut into speed against 0.86 with 2 (MobileNetV2 0.81 -> 0.85, RegNet 0.88 -> 0.89, digits-resnet 0.97
# either way; `python -m benchmarks.rounding --rounds 20 --min-units 2` against 4, 1 thread, load 0.3-2).
MIN_UNITS = 2


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """The CPU's feature flags (``flags`` or ``Features`` in /proc/cpuinfo); on other systems,
    'avx2' for an x86-64 machine and 'asimd' for arm64, which every such CPU ORT supports has."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    machine = platform.machine().lower()
    return frozenset({"avx2"} if machine in ("x86_64", "amd64") else {"asimd"} if machine in ("arm64", "aarch64")
                     else set())


def channel_multiple() -> tuple[int, str]:
    """The channel multiple this CPU's convolution kernels run best at, and why (a few words)."""
    features = cpu_features()
    for feature, multiple in RULES:
        if feature in features:
            return multiple, f"this CPU has {feature.upper()}"
    return FALLBACK, "no vector extension ORT blocks channels for"


def group_multiple(multiple: int, channels: int) -> int:
    """``multiple`` for a group of ``channels``, halved until the group holds MIN_UNITS of it: under 16 a
    24-channel group rounds to 8 and a 12-channel one to 4, so a small group can still keep 2 steps of it."""
    while multiple > 1 and channels < MIN_UNITS * multiple:
        multiple //= 2
    return multiple
