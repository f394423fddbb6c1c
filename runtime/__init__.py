"""What keeps a run going, and the same when resumed: checkpoints and their identity, the random states and the
sampler's position, SLURM preemption, the non-finite-step guard, the checks before a run starts, the model left in
its mode around a callback's own forward passes, and how the run reports (progress of the epoch-end work, the model
summary, the TensorBoard logger)."""
