"""The inference benchmark: what can run here (plan), runners, timing, records, and the
session that runs them all."""
