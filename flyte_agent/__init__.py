"""graphfleet's Flyte side: the data-service task DSL and its connector."""

from flyte_agent.task import (
    DataServiceConfig,
    DataServiceReleaseAllTask,
    DataServiceTask,
    DataServiceTeardownTask,
)

__all__ = ["DataServiceConfig", "DataServiceReleaseAllTask", "DataServiceTask", "DataServiceTeardownTask"]
