"""Files kd reads and writes for a user: atomic writes (atomic.py), bounded reads of files a
user names (bounded_read.py), kd.toml (toml_file.py) and kd's own folders (user_dirs.py)."""
