"""notiflow load benchmark: ``python loadtests/bench.py --help``. The code is the ``bench`` package beside
this file (loadtests/bench/); this file stays the command the Makefile and the docs name."""

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
