"""Garbage collection of expired fleets: what `graphfleet gc` runs.

The connector also sweeps periodically (PulumiProvisioner starts a thread when
`gc_interval_seconds` > 0); this one-shot entry point serves operators and cron jobs, and works
when no connector is running.
"""

from __future__ import annotations

import time

from flyte_agent.settings import Settings, make_provisioner


def collect(settings: Settings, now: float | None = None) -> list[str]:
    """Tear down every fleet whose expiry has passed; returns their names. Raises if some could not be."""
    provisioner = make_provisioner(settings.model_copy(update={"gc_interval_seconds": 0}))
    try:
        return provisioner.gc(time.time() if now is None else now)
    finally:
        close = getattr(provisioner, "close", None)
        if close is not None:
            close()
