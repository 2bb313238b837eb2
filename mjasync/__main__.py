"""`python -m mjasync` runs the `mjasync` command."""

import sys

from .cli import main

sys.exit(main())
