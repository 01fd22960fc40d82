# The graph-engine image: deepgnn-ge plus graphfleet's `python -m graph_engine.server` entry point.
# The StatefulSet runs it as GRAPH_ENGINE_UID (infra/image_contract.py): tests/test_images.py keeps
# the ARG equal to it.
FROM python:3.11.11-slim-bookworm

ARG UID=10000

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Exact versions from the project's lock; --no-deps because the lock is the full resolved set.
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-deps -r requirements.lock
COPY graph_engine/ graph_engine/
COPY infra/ infra/
COPY flyte_agent/ flyte_agent/
COPY workflows/ workflows/
RUN pip install --no-deps --no-build-isolation . \
    && groupadd --gid "${UID}" graph \
    && useradd --uid "${UID}" --gid "${UID}" --no-create-home --shell /usr/sbin/nologin graph

USER ${UID}:${UID}
EXPOSE 50051
ENTRYPOINT ["python", "-m", "graph_engine.server"]
