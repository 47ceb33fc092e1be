"""Training one domain's adapter: the trainer loop (trainer.py: pause/stop, batches, steps,
metrics, checkpoints), on-policy steps (on_policy.py: the student samples, the teacher
scores) and checkpoints with the run fingerprint that guards --resume (checkpoints.py)."""
