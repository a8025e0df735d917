"""Every benchmark, in the order of the table."""

from __future__ import annotations

from bench import draining, importing, listing, merging, presigning, reconciling
from bench.harness import Benchmark

BENCHMARKS: tuple[Benchmark, ...] = (
    presigning.PRESIGN,
    presigning.GET_URLS,
    importing.IMPORT,
    importing.RESYNC,
    merging.BENCHMARK,
    reconciling.BENCHMARK,
    listing.BENCHMARK,
    draining.BENCHMARK,
)

BY_NAME = {b.name: b for b in BENCHMARKS}
