-- Run once by the postgres image on a new volume: MLflow gets its own database beside Optuna's
-- (both keep an alembic_version table, so they cannot share one).
CREATE DATABASE mlflow OWNER sweeper;
