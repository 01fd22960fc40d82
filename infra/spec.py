"""The data-service spec: the one model shared by the task DSL, the connector and the Pulumi component.

Everything a user may say about a graph data service lives here, validated once. The task DSL
(`flyte_agent.DataServiceConfig` is this class) validates it at task definition, the connector
re-validates what comes back out of the task template (protobuf Structs turn ints into floats), and
`GraphDataService` renders Kubernetes objects from it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from infra.contract import SERVER_ARGS, check_coverage

# Re-exported for flyte_agent/deck.py, which another change is rewriting; the rest import the contract.
from infra.quantity import parse_cpu, parse_memory


def check_server_args(args: list[str]) -> list[str]:
    """`args` as separate tokens (`--storage=disk` -> `--storage disk`), or ValueError naming the first
    argument the allow-list refuses. Everything else in the command (data dir, port, ordinal) is the
    platform's: a user can neither repeat nor override it."""
    tokens = [part for arg in args for part in (arg.split("=", 1) if arg.startswith("--") else [arg])]
    out: list[str] = []
    i = 0
    while i < len(tokens):
        flag = tokens[i]
        if flag not in SERVER_ARGS:
            raise ValueError(f"server argument {flag!r} is not allowed; allowed: {', '.join(SERVER_ARGS)}")
        if flag in out:
            raise ValueError(f"server argument {flag!r} is given twice")
        values = SERVER_ARGS[flag]
        if values is None:
            out.append(flag)
            i += 1
            continue
        value = tokens[i + 1] if i + 1 < len(tokens) else None
        if value not in values:
            raise ValueError(f"server argument {flag} takes one of {', '.join(values)}, got {value!r}")
        out += [flag, value]
        i += 2
    return out


_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_GRAPH_URI = re.compile(r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?|/.+|file://.+)$")


# The longest a fleet may live (a shared fleet's own time-to-live: its leases stop it sooner).
TTL_MAX_SECONDS = 14 * 86400
# Resources that, left unset in a task's config, the connector computes from the graph's partition sizes.
SIZED_FIELDS = ("memory", "scratch_size")


class DataServiceSpec(BaseModel):
    """One graph-engine fleet: which graph, how many shards, how big, for how long."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    graph_uri: str | None = Field(
        None, description="Where the converted graph lives: s3://bucket/prefix, file:///path or /volume/path")
    reuse: str | None = Field(
        None, description="Name of a long-lived shared graph service in the datacenter to use instead")
    share: str | None = Field(
        None, description="Share one fleet, by lease, with every execution of the project and domain whose "
                          "config has the same share name, graph and spec (flyte_agent/leases.py)")
    replicas: int = Field(1, ge=1, le=512, description="Graph-engine servers (StatefulSet replicas)")
    partitions: int | None = Field(
        None, ge=1, le=4096, description="Partitions in the graph; default: read from the graph's meta.json")
    image: str | None = Field(None, description="Graph-engine image; default: the connector's/datacenter's")
    cpu: str = Field("1", description="CPU request per server (Kubernetes quantity)")
    memory: str = Field("2Gi", description="Memory request per server (Kubernetes quantity)")
    cpu_limit: str | None = Field(None, description="CPU limit per server; default: the request")
    memory_limit: str | None = Field(None, description="Memory limit per server; default: the request")
    port: int = Field(50051, ge=1024, le=65535, description="gRPC port of every server")
    ttl_seconds: int = Field(
        6 * 3600, ge=300, le=TTL_MAX_SECONDS,
        description="The fleet is garbage-collected this long after creation")
    scratch_size: str = Field("20Gi", description="Writable scratch volume for downloaded partitions")
    startup_seconds: int = Field(
        1800, ge=30, le=24 * 3600, description="How long a server may take to load its partitions")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on every object")
    args: list[str] = Field(
        default_factory=list,
        description=f"Extra graph-engine server arguments, from the allow-list {', '.join(SERVER_ARGS)}")

    @field_validator("cpu", "cpu_limit")
    @classmethod
    def _cpu(cls, value: str | None) -> str | None:
        if value is not None:
            parse_cpu(value)
        return value

    @field_validator("memory", "memory_limit", "scratch_size")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None:
            parse_memory(value)
        return value

    @field_validator("graph_uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is not None and not _GRAPH_URI.match(value):
            raise ValueError(f"must be s3://bucket/prefix, file:///path or an absolute path, got {value!r}")
        return value

    @field_validator("reuse", "share")
    @classmethod
    def _reuse(cls, value: str | None) -> str | None:
        if value is not None and not _DNS_LABEL.match(value):
            raise ValueError(f"must be a DNS-1123 label (a-z, 0-9, '-', starting with a letter), "
                             f"got {value!r}")
        return value

    @field_validator("args")
    @classmethod
    def _args(cls, value: list[str]) -> list[str]:
        return check_server_args(value)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        check_labels(value)
        for key in value:
            if key.startswith("graphfleet.io/") or key.startswith("app.kubernetes.io/"):
                raise ValueError(f"label key {key!r} is reserved for graphfleet")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DataServiceSpec:
        if (self.graph_uri is None) == (self.reuse is None):
            raise ValueError("set exactly one of graph_uri (provision a fleet) or reuse "
                             "(use a shared service)")
        if self.share is not None and self.reuse is not None:
            raise ValueError("share provisions a fleet that executions share; reuse names a datacenter's "
                             "shared service: set one of them")
        if self.cpu_limit is not None and parse_cpu(self.cpu_limit) < parse_cpu(self.cpu):
            raise ValueError(f"cpu_limit {self.cpu_limit} is below the request cpu {self.cpu}")
        if self.memory_limit is not None and parse_memory(self.memory_limit) < parse_memory(self.memory):
            raise ValueError(f"memory_limit {self.memory_limit} is below the request memory {self.memory}")
        if self.partitions is not None:
            check_coverage(self.replicas, self.partitions)
        return self

    def with_partitions(self, partitions: int, **sized: str) -> DataServiceSpec:
        """The spec once the graph's partition count is known (read from its meta.json), with
        `sized` resources (SIZED_FIELDS computed from the graph)."""
        return DataServiceSpec.model_validate({**self.to_custom(), "partitions": partitions, **sized})

    def to_template(self) -> dict[str, Any]:
        """`to_custom` without the SIZED_FIELDS the author left unset: the connector sizes those
        from the graph (flyte_agent/connector.py sized_resources)."""
        return {k: v for k, v in self.to_custom().items()
                if k not in SIZED_FIELDS or k in self.model_fields_set}

    def to_custom(self) -> dict[str, Any]:
        """The exact-typed dict for a task template's `custom`: no None, ints stay ints."""
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def from_custom(cls, custom: dict[str, Any]) -> DataServiceSpec:
        """Parse what came back from a protobuf Struct, where every number is a float."""
        fixed = {k: _int_if_integral(v) for k, v in custom.items()}
        return cls.model_validate(fixed)


def _int_if_integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """Kubernetes label syntax (keys and values), for labels and node selectors alike."""
    for key, val in labels.items():
        if not _LABEL_KEY.match(key):
            raise ValueError(f"label key {key!r} is not a valid Kubernetes label key")
        if not _LABEL_VALUE.match(val):
            raise ValueError(f"label {key}={val!r}: value must be <= 63 chars of A-Z, a-z, 0-9, "
                             "'-', '_', '.'")
    return labels


def describe_error(err: ValidationError, where: str, key: Callable[[str], str] = str) -> str:
    """One line per problem: `<where>: <key.path>: <what is wrong>, got <value>`.

    `key` renames each key of the path (a stack file spells the spec's keys in camelCase).
    """
    lines = []
    for problem in err.errors():
        path = ".".join(key(str(p)) if not isinstance(p, int) else f"[{p}]" for p in problem["loc"])
        path = path.replace(".[", "[")
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key; remove it or check its spelling"
        got = problem.get("input")
        quiet = (problem["type"] in ("extra_forbidden", "missing") or "got" in message or not problem["loc"]
                 or isinstance(got, (dict, list)))  # a whole object: the message says what is wrong
        suffix = "" if quiet else f", got {got!r}"
        lines.append(f"{where}: {path + ': ' if path else ''}{message}{suffix}")
    return "\n".join(lines)
