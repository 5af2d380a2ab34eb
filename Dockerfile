# syntax=docker/dockerfile:1
# query-signing-proxy, the sidecar image.
#
#   docker build -t query-signing-proxy:0.1.0 .
#
# Two stages on the same pinned base: "build" makes the wheel from this repository and installs it, with its
# runtime dependencies and the `fast` extra (uvloop: a sidecar pays its per-request CPU in every pod;
# docs/benchmarks.md has the figures), into a virtual environment; "runtime" copies that environment and nothing
# else (no compiler, no pip, no test tools). The image runs as a numeric non-root UID, writes nothing outside
# /tmp (works with readOnlyRootFilesystem) and needs no shell or curl for its health check.
# .ci/run repeats the build stage's steps in a throwaway virtual environment on every CI run.

FROM python:3.12.12-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy/ proxy/
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/query-signing-proxy \
 && /opt/query-signing-proxy/bin/pip install "$(echo /wheels/*.whl)[fast]" \
 && /opt/query-signing-proxy/bin/pip uninstall --yes pip

FROM python:3.12.12-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="query-signing-proxy" \
      org.opencontainers.image.description="Unsigned AWS Query API in, role-signed AWS JSON 1.1 out: a sidecar for Secrets Manager" \
      org.opencontainers.image.licenses="Apache-2.0"
# pip is an installer, not something the proxy runs: leave it out of the final image.
RUN python -m pip uninstall --yes pip
COPY --from=build /opt/query-signing-proxy /opt/query-signing-proxy
COPY config/container.yaml /etc/query-signing-proxy/proxy.yaml
# PYTHONDONTWRITEBYTECODE: no .pyc writes at run time (read-only root filesystem); HOME=/tmp: botocore looks
# for ~/.aws there (reads only). HEALTHCHECK_URL: the admin listener of the default config.
ENV PATH=/opt/query-signing-proxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HEALTHCHECK_URL=http://127.0.0.1:8978/healthz
# 65532: the conventional "nonroot" UID/GID of distroless images; no entry in /etc/passwd is needed.
USER 65532:65532
# 8977: the Query API (loopback inside the pod/container network namespace); 8978: /healthz, /readyz, /metrics.
EXPOSE 8977 8978
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=2)"]
ENTRYPOINT ["/opt/query-signing-proxy/bin/query-signing-proxy"]
CMD ["--config", "/etc/query-signing-proxy/proxy.yaml"]
