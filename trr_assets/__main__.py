"""``python -m trr_assets`` runs the CLI."""

import sys

from trr_assets.cli import main

sys.exit(main())
