# The graph-engine image: deepgnn-ge plus graphfleet's `python -m graph_engine.server` entry point.
# The StatefulSet runs it as uid/gid 1000 (GraphDataServiceArgs.run_as_user): keep them equal.
FROM python:3.11.11-slim-bookworm

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
    && groupadd --gid 1000 graph && useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin graph

USER 1000:1000
EXPOSE 50051
ENTRYPOINT ["python", "-m", "graph_engine.server"]
