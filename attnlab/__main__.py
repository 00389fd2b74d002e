"""``python -m attnlab ...``: see :mod:`attnlab.cli`."""
import sys

from .cli import main

sys.exit(main())
