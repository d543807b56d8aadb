"""sweeper: Optuna sweeps of timm fine-tuning runs on image folders, tracked in MLflow."""

__version__ = "0.1.0"
DISTRIBUTION = "sweeper-timm"  # the name pip knows (pyproject.toml); the package and command: `sweeper`
