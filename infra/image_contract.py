"""What the container images and the pods that run them must agree on, in one place.

A Dockerfile cannot import Python, so `docker/*.Dockerfile` restate these values as `ARG` defaults;
`tests/test_images.py` holds each Dockerfile equal to this module and to `requirements.lock`
(the pulumi CLI and pulumi-kubernetes plugin versions are the lock's `pulumi` / `pulumi_kubernetes`).

High uids (>= 10000) keep the containers' users apart from any host account (kube-score and
similar scanners flag uids below 10000).
"""

from __future__ import annotations

GRAPH_ENGINE_UID = 10000
CONNECTOR_UID = 10001
# The connector image's user: the Pulumi CLI resolves the current user for every lock of the
# self-managed state backend (pulumi/pulumi sdk/go/common/workspace/paths.go, user.Current()) and fails
# for a uid without a passwd entry, so the pod's uid must be the one the image created.
CONNECTOR_USER = "connector"
# Where the connector image installs the pulumi-kubernetes plugin at build time (a datacenter cannot
# download plugins at run time). Read-only at run time (read-only root filesystem).
IMAGE_PULUMI_HOME = "/opt/pulumi-home"

# The connector pod's terminationGracePeriodSeconds: a `pulumi up` in flight is cancelled the CLI's
# way within it (flyte_agent/drain.py), so the Deployment and the drain read this one value.
CONNECTOR_TERMINATION_GRACE_SECONDS = 60
