"""Where MLX runs: a fast BLAS preloaded before MLX on Linux CPU (blas.py), parallel CPU
streams (cpu_streams.py) and data-parallel processes (distributed.py)."""
