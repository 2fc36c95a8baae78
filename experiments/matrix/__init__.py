"""The study's matrix (experiments.study): presets and rows, running each row in a
subprocess, and the study's own files."""
