"""trr-assets' benchmark suite: ``python -m bench`` (``./dev bench``).

Each row measures one of the project's speed figures and its baseline in the
same run, against a real PostgreSQL (pgserver) and moto, and the suite
prints one table and writes the same as JSON. See ``python -m bench --help``
and docs/benchmarks.md.
"""
