"""The ``trr-assets`` command line: ``main`` (the parser and the edge, where
errors become exit codes), ``commands`` (one handler per subcommand),
``render`` (JSON, tables, progress bars) and ``demo``.
"""

from trr_assets.cli.main import main

__all__ = ["main"]
