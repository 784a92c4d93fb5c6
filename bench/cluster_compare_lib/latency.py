"""Latency samples and percentiles.

Every sample is kept (8 bytes each, in an array), so percentiles are exact, not
bucketed; a run is bounded in time, and SAMPLES_MAX bounds the memory if a
system is far faster than expected. Samples past the limit are counted but not
kept, and the report says so.
"""

from __future__ import annotations

import math
from array import array

SAMPLES_MAX = 20_000_000  # 160 MB; at 50,000 writes/s that is 400 s of samples


class LatencyRecorder:
    def __init__(self) -> None:
        self.samples_ns = array("q")
        self.dropped = 0

    def record(self, latency_ns: int) -> None:
        if len(self.samples_ns) < SAMPLES_MAX:
            self.samples_ns.append(latency_ns)
        else:
            self.dropped += 1

    def __len__(self) -> int:
        return len(self.samples_ns)

    def percentiles_ms(self, ps: tuple[float, ...]) -> dict[float, float | None]:
        """Nearest-rank percentiles in milliseconds: the smallest sample with at least p% at or below it."""
        ordered = sorted(self.samples_ns)
        n = len(ordered)
        result: dict[float, float | None] = {}
        for p in ps:
            assert 0 < p <= 100, p
            if n == 0:
                result[p] = None
                continue
            rank = max(1, math.ceil(p / 100 * n))
            result[p] = ordered[rank - 1] / 1e6
        return result
