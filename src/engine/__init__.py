"""Training-side machinery: checkpoints (and, later, the training loop and schedules)."""
