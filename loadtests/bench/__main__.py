"""``python -m bench`` from loadtests/: the same as ``python loadtests/bench.py``."""

import sys

from bench.cli import main

sys.exit(main())
