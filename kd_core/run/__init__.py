"""A run as files: its record, lock and control channel (record.py, control.py), the one
reader of its event file (event_file.py), where it stands (status.py: `kd status`, the Runs
tab) and its outputs (outputs.py: adapters, adapter_config.json, kd_summary.json)."""
