"""One optimiser step: the TrainStep protocol (protocol.py), the compiled offline, online and
aligned steps and `make_step`, which picks one per trainer (fused.py), and the two-phase
chunked loss for large vocabularies (chunked.py, chunked_aligned.py)."""
