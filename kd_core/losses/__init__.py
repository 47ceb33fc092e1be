"""The loss: CE, forward KL and its readable references, the shared soft-max helpers
(core.py); the five divergences and the one fused offline loss that takes any of them
(divergences.py); the loss across two tokenizers, per aligned span (aligned.py)."""
