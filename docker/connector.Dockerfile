# The Flyte connector image: graphfleet from the lock, a pinned pulumi CLI and the pulumi-kubernetes
# plugin installed at build time (a datacenter cannot download plugins at run time).
FROM python:3.11.11-slim-bookworm

# Keep equal to pulumi / pulumi_kubernetes in requirements.lock, and the user and plugin home to
# infra/image_contract.py (the Deployment runs as that uid and links those plugins into its
# writable PULUMI_HOME); tests/test_images.py checks all of them.
ARG PULUMI_VERSION=3.272.0
ARG PULUMI_KUBERNETES_VERSION=4.32.0
ARG UID=10001
ARG ACCOUNT=connector
ARG IMAGE_PULUMI_HOME=/opt/pulumi-home

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PULUMI_HOME=${IMAGE_PULUMI_HOME} PULUMI_SKIP_UPDATE_CHECK=true PATH=/opt/pulumi:$PATH
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
# The Pulumi CLI looks the current user up (self-managed state backend locks): the uid needs a passwd entry.
RUN pip install --no-deps --no-build-isolation . \
    && groupadd --gid "${UID}" "${ACCOUNT}" \
    && useradd --uid "${UID}" --gid "${UID}" --no-create-home --shell /usr/sbin/nologin "${ACCOUNT}"

USER ${UID}:${UID}
EXPOSE 8000 9090
# --modules flyte_agent.serve builds the provisioner before serving (flyte_agent/serve.py).
CMD ["pyflyte", "serve", "connector", "--port", "8000", "--modules", "flyte_agent.serve"]
