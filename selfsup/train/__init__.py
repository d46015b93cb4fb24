"""Training: the loop, optimizers and schedules, checkpoints, run-directory logging."""
