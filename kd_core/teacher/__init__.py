"""The teacher pass: batched sampling of the teacher's answers, its soft targets (top-k
log-probabilities at the loss temperature plus the chosen token's), and the cache that keeps
them, keyed by the teacher's identity (teacher_pass.py)."""
