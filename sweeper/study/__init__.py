"""The study file and what it resolves to: schema, trial configs, search dimensions, designs, starts.

Imports nothing heavy (no torch, Optuna or MLflow at module level), so the CLI and every trial read a
study cheaply."""
