"""Models: find, check, describe and load them (load.py), know them by their bytes
(identity.py: the weights and tokenizer fingerprints that key caches and resumes), and
estimate their memory before a run (memory.py)."""
