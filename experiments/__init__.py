"""Everything that runs, measures and reports: data, trainers, resource sampler and the
`python -m experiments.X` entry points (run, bench, ...)."""
import scratch_nn  # noqa: E402,F401  first, so its thread settings precede numpy's import
