"""graphfleet's Flyte side: the data-service task DSL and its connector.

The DSL's names are imported on first use: the `graphfleet` console script (flyte_agent/cli.py) lives
in this package, and its stack commands should not pay for importing flytekit (~1.5 s).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flyte_agent.task import (
        DataServiceConfig,
        DataServiceReleaseAllTask,
        DataServiceTask,
        DataServiceTeardownTask,
    )

__all__ = ["DataServiceConfig", "DataServiceReleaseAllTask", "DataServiceTask", "DataServiceTeardownTask"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from flyte_agent import task

        return getattr(task, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
