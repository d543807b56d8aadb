# The MLflow tracking server alone: a small Python image with MLflow and the PostgreSQL driver, a few
# hundred MB instead of the workers' multi-GB CUDA image. Built by docker/docker-compose.yml.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
# The version the tests run against; the workers' client accepts any 3.x server.
ARG MLFLOW_VERSION=3.17.2
RUN pip install "mlflow==${MLFLOW_VERSION}" "psycopg[binary]>=3.1,<4"
ENTRYPOINT ["mlflow", "server"]
