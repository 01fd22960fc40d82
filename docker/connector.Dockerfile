# The Flyte connector image: graphfleet from the lock, a pinned pulumi CLI and the pulumi-kubernetes
# plugin installed at build time (a datacenter cannot download plugins at run time).
FROM python:3.11.11-slim-bookworm

# Keep equal to pulumi / pulumi_kubernetes in requirements.lock (tests/test_images.py checks).
ARG PULUMI_VERSION=3.272.0
ARG PULUMI_KUBERNETES_VERSION=4.34.2

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PULUMI_HOME=/opt/pulumi-home PULUMI_SKIP_UPDATE_CHECK=true PATH=/opt/pulumi:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311 curl=7.88.1-10+deb12u12 \
    && rm -rf /var/lib/apt/lists/* \
    && curl -fsSL "https://get.pulumi.com/releases/sdk/pulumi-v${PULUMI_VERSION}-linux-x64.tar.gz" \
       | tar -xz -C /opt \
    && pulumi plugin install resource kubernetes "${PULUMI_KUBERNETES_VERSION}"

WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-deps -r requirements.lock
COPY infra/ infra/
COPY flyte_agent/ flyte_agent/
COPY graph_engine/ graph_engine/
COPY workflows/ workflows/
RUN pip install --no-deps --no-build-isolation . \
    && groupadd --gid 1001 connector \
    && useradd --uid 1001 --gid 1001 --create-home --shell /usr/sbin/nologin connector \
    && chown -R 1001:1001 "${PULUMI_HOME}"

USER 1001:1001
EXPOSE 8000 9090
# --modules flyte_agent.serve builds the provisioner before serving (flyte_agent/serve.py).
CMD ["pyflyte", "serve", "connector", "--port", "8000", "--modules", "flyte_agent.serve"]
