"""Where a study and its runs live: the Optuna storage, MLflow tracking, the trial record, reachability."""
