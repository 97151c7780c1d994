"""notiflow load benchmark (``python loadtests/bench.py --help``), by concern:

- ``metering``: CPU and memory of both sides, from /proc;
- ``records``: what was sent and what arrived, and latency percentiles;
- ``clients``: WebSocket clients that acknowledge what they receive;
- ``producers``: closed-loop POSTs, in this process or in ``--client-procs`` children;
- ``server``: py-spy profiles, delivery states in PostgreSQL, the stack's warnings;
- ``run``: the phases of one run; ``tables``: the printed table; ``cli``: arguments, the stack, the output.

``loadtests/bench.py`` and ``python -m bench`` (in loadtests/) both run ``cli.main``.
"""
