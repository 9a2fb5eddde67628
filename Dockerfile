# syntax=docker/dockerfile:1
# Shoal's container image: `shoal serve` is the entrypoint, listening on 0.0.0.0 (REST on
# 8080, gRPC on 8081) as a non-root user (uid 10001). Build it from the repository's root:
#
#   docker build -t shoal:dev --build-arg EXTRAS=sklearn,s3 .
#   docker run --rm -p 8080:8080 -p 8081:8081 -v "$PWD/models:/models:ro" \
#     -e SHOAL_ADMIN_TOKEN=change-me shoal:dev
#
# EXTRAS picks the frameworks and stores (pyproject.toml's extras: sklearn, xgboost, onnx,
# pytorch, s3, gcs, ...; empty for none). The server listens on every interface inside the
# container: set SHOAL_ADMIN_TOKEN (or --admin-token) so that loading, unloading and rollout
# changes need a token. No HEALTHCHECK: Kubernetes probes /v2/health/live and /v2/health/ready
# (docs/kubernetes.md).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG EXTRAS=sklearn
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/shoal
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# "/src[sklearn,s3]", or "/src" when EXTRAS is empty.
RUN /opt/shoal/bin/pip install --no-cache-dir "/src${EXTRAS:+[$EXTRAS]}"

FROM python:${PYTHON_VERSION}-slim-bookworm
# uid/gid 10001: the rendered pods' runAsUser (numeric, so runAsNonRoot can check it).
RUN groupadd --system --gid 10001 shoal \
    && useradd --system --uid 10001 --gid shoal --home-dir /home/shoal --create-home \
       --shell /usr/sbin/nologin shoal \
    && mkdir -p /models
COPY --from=build /opt/shoal /opt/shoal
ENV PATH=/opt/shoal/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SHOAL_HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/shoal
EXPOSE 8080 8081
ENTRYPOINT ["shoal", "serve"]
CMD ["/models"]
