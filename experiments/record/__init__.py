"""What a run records: its folder and CSV logs, runs.csv, summary.json, the machine and
versions, and the background resource sampler."""
