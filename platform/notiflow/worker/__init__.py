"""Worker loops: the stream worker and the retry worker (which also runs the reconciler)."""
