"""notiflow: fault-tolerant realtime notification delivery."""

__version__ = "0.1.0"
