"""`python -m bot.cli …`, the same as the `chargebot` console script."""

import sys

from bot.cli import main

if __name__ == "__main__":  # not when a spawned worker re-imports it (`serve --workers`)
    sys.exit(main())
