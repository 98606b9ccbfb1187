"""Training: the loop, LR schedules, checkpoints, pre-training at many token budgets."""
