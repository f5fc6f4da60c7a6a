# syntax=docker/dockerfile:1
# Images of the prunesearch deployment (docker-compose.yml).
#
#   api  (default target): python:3.11-slim + torch + prunesearch[service,ray]; runs `prunesearch serve`.
#   ray:  the Ray image of the same Ray version + torch + prunesearch, for the Ray head and workers.
#         The head needs our code too: with Ray Client (ray://) the head's client server unpickles
#         the trial function, which imports `workers` and `service.runner_trial`.
#
# Build args: TORCH_INDEX selects the torch build (CPU by default; a CUDA one for GPU workers, e.g.
# https://download.pytorch.org/whl/cu128), RAY_IMAGE the Ray base (…-py311-cpu or …-py311-gpu). The
# Python minor version must be the same in both targets (Ray Client requires it): 3.11.

ARG PYTHON_IMAGE=python:3.11-slim
ARG RAY_VERSION=2.60.0
ARG RAY_IMAGE=rayproject/ray:${RAY_VERSION}-py311-cpu

# -- Ray head and workers ------------------------------------------------------------------------------
FROM ${RAY_IMAGE} AS ray
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# torch first, from its own index, so resolving prunesearch's `torch>=2.1` never swaps the build
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY --chown=ray:users . /home/ray/prunesearch
# ray itself comes with the image (same version as the api's); install only our package and its deps
RUN pip install /home/ray/prunesearch
USER root
# the artifact volume is created from this mount point: owned by the ray user (uid 1000, gid 100)
RUN mkdir -p /data/artifacts && chown -R 1000:100 /data
USER ray
WORKDIR /home/ray

# -- API server (default target) -----------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS api
ARG RAY_VERSION
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY . /src
# ray pinned to the cluster's version: Ray Client needs the same Ray (and Python) on both ends
RUN pip install "/src[service,ray]" "ray[default]==${RAY_VERSION}" \
    && mkdir -p /opt/prunesearch && cp -r /src/web /opt/prunesearch/web && rm -rf /src
# the web UI's static files (not a Python package): service/api/web.py finds them here
ENV PRUNESEARCH_WEB_DIR=/opt/prunesearch/web
# same uid/gid as the Ray image's user, so api and workers can both write the shared artifact volume
RUN groupadd --force --gid 100 users \
    && useradd --uid 1000 --gid 100 --create-home prunesearch \
    && mkdir -p /data/artifacts && chown -R 1000:100 /data
USER 1000:100
WORKDIR /data
EXPOSE 8000
CMD ["prunesearch", "serve", "--host", "0.0.0.0", "--port", "8000"]
