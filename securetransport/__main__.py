"""`python -m securetransport` runs the admin command."""

import sys

from securetransport.cli import main

sys.exit(main())
