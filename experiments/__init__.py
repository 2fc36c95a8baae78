"""Everything that runs, measures and reports: data, trainers, resource sampler and the
`python -m experiments.X` entry points (run, bench, ...)."""
