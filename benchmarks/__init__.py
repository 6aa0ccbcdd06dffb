"""Benchmarks: synthetic CDNOW-like logs and the features stage timed against lifetimes.

``python -m benchmarks.generate`` writes a log, ``python -m benchmarks.run`` runs every
benchmark (``--where`` shows where the time goes).
See benchmarks/README.md.
"""
