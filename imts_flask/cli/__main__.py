"""`python -m imts_flask.cli`."""

import sys

from . import main

sys.exit(main())
