"""Launching where the compute is: Slurm scripts, Kubernetes manifests and the MLflow UI."""
