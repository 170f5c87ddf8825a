# syntax=docker/dockerfile:1
# Image for the auditflow Prefect worker (and the one-shot `deploy` service) in
# docker-compose.yml. The repo is installed editable at /opt/auditflow, which is
# also the directory prefect.yaml's pull step switches to before a flow run.
FROM python:3.11-slim

# CPU wheels of torch/torchvision by default (the stack has no GPU). For CUDA wheels:
#   docker compose build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/auditflow

# Copy the repo without local virtualenvs, git metadata or run outputs (this works
# with or without a .dockerignore; BuildKit, the default builder, is required).
RUN --mount=type=bind,source=.,target=/tmp/src \
    tar -C /tmp/src \
        --exclude=./.venv --exclude=./.git --exclude=./mlruns --exclude=./mlartifacts \
        --exclude='*.db' --exclude='__pycache__' \
        -cf - . | tar -C /opt/auditflow -xf -

RUN pip install --extra-index-url "${TORCH_INDEX_URL}" -e .

CMD ["prefect", "worker", "start", "--pool", "auditflow"]
