"""Data parallelism plumbing: one process per GPU with torchrun's variables (launch) and the
torch-free rendezvous whose links double as a liveness watchdog."""
