"""``python -m notiflow``: the same commands as the ``notiflow`` script."""

from notiflow.cli import main

raise SystemExit(main())
