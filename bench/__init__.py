"""Benchmark suite of kd (see bench/README.md); a package so workers run as `-m bench.worker`."""
