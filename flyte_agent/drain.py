"""Graceful drain on SIGTERM: what a connector replica does when Kubernetes stops it (rollout,
eviction, scale-down).

Without it the process dies at once and the pulumi CLIs it started (each in its own session, so a
timed-out one can be killed with its plugins) carry on orphaned or die mid-update, leaving locks that
another replica must judge stale. With it, every running operation is cancelled the CLI's own way
(SIGINT: ends as failed, releases the lock), within the pod's grace period, and then the process
exits as SIGTERM asks.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from types import FrameType

from infra.image_contract import CONNECTOR_TERMINATION_GRACE_SECONDS

log = logging.getLogger(__name__)

# The pod's grace period (the Deployment's terminationGracePeriodSeconds), less time to exit after the
# drain before the kubelet's SIGKILL.
EXIT_MARGIN_SECONDS = 10.0
DRAIN_SECONDS = CONNECTOR_TERMINATION_GRACE_SECONDS - EXIT_MARGIN_SECONDS


def drain_on_sigterm(drain: Callable[[float], None], seconds: float = DRAIN_SECONDS) -> None:
    """Run `drain(seconds)` on the first SIGTERM, then exit with 143 (128 + SIGTERM)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
        log.warning("SIGTERM: draining running pulumi operations (up to %ss)", seconds)
        try:
            drain(seconds)
        finally:
            sys.exit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)
