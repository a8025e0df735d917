"""Process-wide settings a command sets once at start-up (the CLI; the bench
runs each row the way the command would).

Nothing here is imported by the jobs themselves: a program that calls
``sync.run`` or ``reconcile.run`` on its own may call ``tune_collector`` too.
"""

from __future__ import annotations

import gc

# Young objects are collected every 50,000 allocations, not CPython's 700.
COLLECTOR_FIRST_THRESHOLD = 50_000


def tune_collector() -> None:
    """Set this process's cyclic garbage collector for sync and reconcile.

    A pass allocates a few small tuples per key (the listed object, the row,
    what the merge compares), a million keys a run, nearly all freed at once
    by reference counting. With CPython's default first threshold the
    collector runs every 700 allocations and re-walks every chunk still in
    use: measured, half the CPU of a no-op sync of 200,000 objects. Cycles
    are still collected, after 50,000 allocations instead of 700. The
    ``trr-assets`` command sets it for every subcommand (the worker
    included).
    """
    gc.set_threshold(COLLECTOR_FIRST_THRESHOLD, *gc.get_threshold()[1:])
