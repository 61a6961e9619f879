"""Training-side machinery: the device context, the training loop (`trainer.train`), its jitted step,
optimizers and schedules, evaluation, checkpoints, resume and preemption."""
