"""Benchmarks of flatness against other libraries (``python -m benchmarks.curvature``)."""
