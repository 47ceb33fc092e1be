"""The teacher's side of a run: its soft targets (top-k log-probabilities at the loss
temperature plus the chosen token's) over its answers (teacher_pass.py), and the cache that
keeps them, keyed by the teacher's identity (cache.py). Sampling itself is
kd_core/generate.py."""
