"""Tables and charts made from records: the study's comparison (experiments.compare), the
inference charts, thread scaling, and accuracy against time."""
