# The MLflow tracking server alone: a small Python image with MLflow and the PostgreSQL driver, a few
# hundred MB instead of the workers' multi-GB CUDA image. Built by docker/docker-compose.yml; for
# Kubernetes: docker build -f docker/mlflow.Dockerfile -t sweeper-mlflow:3.17.2 docker
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
# Not root: uid 10001, as sweeper's image and `sweeper k8s`'s pods; it owns the artifacts folder.
RUN useradd --create-home --uid 10001 --user-group mlflow \
    && mkdir /mlartifacts \
    && chown mlflow:mlflow /mlartifacts
# The version the tests run against (the image's tag); the workers' client accepts any 3.x server.
ARG MLFLOW_VERSION=3.17.2
RUN pip install "mlflow==${MLFLOW_VERSION}" "psycopg[binary]>=3.1,<4"
USER 10001:10001
ENTRYPOINT ["mlflow", "server"]
