"""Benchmarks: synthetic CDNOW-like logs and the features stage timed against lifetimes.

``python -m benchmarks.generate`` writes a log, ``python -m benchmarks.bench_features``
times the stage, ``python -m benchmarks.profile_features`` shows where its time goes.
See benchmarks/README.md.
"""
