"""One trial's training, in the trial process: model, fit loop, losses, schedules, averaging, checkpoints,
costs and evaluation. Knows nothing of Optuna or MLflow: it takes a TrialConfig and returns its outcome."""
