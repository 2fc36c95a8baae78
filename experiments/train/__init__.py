"""Training: the adapters that give scratch and torch one step interface, the one training
loop, data (CIFAR-10, synthetic, host and GPU batch loaders), recipes, checkpoints, and the
job that experiments.run drives."""
