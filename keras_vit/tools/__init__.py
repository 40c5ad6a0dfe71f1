"""Tools that are not library API: benchmarks, kernel comparisons and profiling
(``keras-vit benchmark``, ``scripts/compare_kernels.py``, ``scripts/profile_ops.py``)."""
