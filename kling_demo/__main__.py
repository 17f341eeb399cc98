"""`python -m kling_demo generate IMAGE --prompt …`: the command line (see `kling_demo.cli` for exit codes)."""

from __future__ import annotations

import sys

from kling_demo.cli import main

if __name__ == "__main__":
    sys.exit(main())
