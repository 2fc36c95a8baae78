"""Benchmark cores: training-step timing (bench, scaling), data-parallel scaling runs, the
GPU kernel profile, and the inference benchmark (infer/)."""
