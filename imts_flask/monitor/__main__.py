"""`python -m imts_flask.monitor`: see the package's docstring."""

import sys

from . import main

sys.exit(main())
