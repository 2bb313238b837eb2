"""`python -m mjasync` runs the `mjasync` command."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while still importing: nothing has been sent yet
    sys.exit(130)

sys.exit(main())
