"""Benchmarks of flatlib against other libraries (``python -m benchmarks.curvature``)."""
