"""``python -m densepure.cli``: the same as the ``densepure`` command."""

import sys

from densepure.cli.main import main

sys.exit(main())
