"""Every benchmark, in the order of the table."""

from __future__ import annotations

from bench import draining, end_to_end, importing, listing, merging, presigning, reconciling, version_listing
from bench.harness import Benchmark

BENCHMARKS: tuple[Benchmark, ...] = (
    presigning.PRESIGN,
    presigning.GET_URLS,
    importing.IMPORT,
    importing.RESYNC,
    end_to_end.E2E_IMPORT,
    end_to_end.E2E_IMPORT_BIG,
    end_to_end.E2E_IMPORT_LISTING,
    end_to_end.E2E_IMPORT_LISTING_BIG,
    end_to_end.E2E_RESYNC,
    merging.BENCHMARK,
    reconciling.BENCHMARK,
    listing.BENCHMARK,
    draining.BENCHMARK,
    version_listing.BENCHMARK,
)

BY_NAME = {b.name: b for b in BENCHMARKS}
