"""Training examples in the student's vocabulary: prompt formatting, Example / Batch and the
deterministic batch plans (batch.py); same-vocabulary examples from the teacher's sequences
(same_vocab.py); examples across two tokenizers, with per-span targets (aligned.py)."""
