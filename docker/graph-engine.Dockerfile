# The graph-engine image: deepgnn-ge plus graphfleet's `python -m graph_engine.server` entry point, and
# nothing else: the server's own pins (graph-engine.requirements.lock, no torch, flytekit or pulumi) and
# the two packages it runs from, graph_engine/ and the layers' contract (infra/contract.py, standard
# library only). tests/test_images.py holds the pins equal to requirements.lock and the copies to these.
# The StatefulSet runs it as GRAPH_ENGINE_UID (infra/image_contract.py): tests/test_images.py keeps
# the ARG equal to it.
FROM python:3.11.11-slim-bookworm

ARG UID=10000

# PYTHONPATH: the sources are run in place from /app, not installed (no packaging metadata needed).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app
WORKDIR /app

# Exact versions; --no-deps because the file is the full resolved set of what the server runs on.
COPY docker/graph-engine.requirements.lock ./
RUN pip install --no-deps -r graph-engine.requirements.lock \
    && groupadd --gid "${UID}" graph \
    && useradd --uid "${UID}" --gid "${UID}" --no-create-home --shell /usr/sbin/nologin graph
COPY graph_engine/ graph_engine/
COPY infra/__init__.py infra/contract.py infra/

USER ${UID}:${UID}
EXPOSE 50051
ENTRYPOINT ["python", "-m", "graph_engine.server"]
