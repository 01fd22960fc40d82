"""The field types and checks every stack-file model shares (infra/config.py, infra/connector_config.py).

Keys are spelled camelCase in a stack file (`camel`); names, quantities and durations are checked as the
cluster and FlytePropeller read them, and a plain environment variable may not carry a credential.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from infra import names
from infra.quantity import parse_cpu, parse_memory

# The stack file's config namespace: every key is `graphfleet:<key>`.
NAMESPACE = "graphfleet"
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h))+$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def camel(name: str) -> str:
    """`gpus_per_node` -> `gpusPerNode`: how keys are spelled in a stack file."""
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)


def _checked(check: Any) -> AfterValidator:
    """Adapt an `infra.names` check (whose message starts with a field name) to a pydantic field."""

    def run(value: str) -> str:
        try:
            return str(check(value, "value"))
        except ValueError as exc:
            raise ValueError(str(exc).removeprefix("value: ")) from None

    return AfterValidator(run)


DnsLabel = Annotated[str, _checked(names.check_dns1035_label)]
Subdomain = Annotated[str, _checked(names.check_subdomain)]
EnvName = Annotated[str, _checked(names.check_env_name)]


def _cpu(value: str) -> str:
    parse_cpu(value)
    return value


def _memory(value: str) -> str:
    parse_memory(value)
    return value


Cpu = Annotated[str, AfterValidator(_cpu)]
Memory = Annotated[str, AfterValidator(_memory)]


def parse_duration(value: str) -> float:
    """A Go duration as FlytePropeller reads it ("10s", "1m30s") in seconds."""
    if not _DURATION.match(value):
        raise ValueError(f"must be a duration such as '10s', '1m' or '1m30s', got {value!r}")
    return sum(int(n) * _DURATION_UNITS[unit] for n, unit in re.findall(r"([0-9]+)(ms|s|m|h)", value))


def _duration(value: str) -> str:
    parse_duration(value)
    return value


Duration = Annotated[str, AfterValidator(_duration)]
# FlyteAdmin's namespace mapping, `{project}` and `{domain}` filled in: where an execution runs.
NamespaceTemplate = Annotated[str, Field(pattern=r"^[-a-z0-9{}]+$")]


class Model(BaseModel):
    """A stack-file section: unknown keys refused, camelCase aliases, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=camel,
                              validate_by_name=True, validate_by_alias=True)


def snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


# Variables that carry credentials or redirect where graphs are read: they come from `objectStore`
# (a mounted Secret, workload identity), never as plain values in a manifest or Pulumi state.
_SECRET_ENV = re.compile(r"(SECRET|PASSWORD|PASSPHRASE|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY)")
_STORE_ENV = frozenset({"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "FSSPEC_S3_ENDPOINT_URL",
                        "AWS_SHARED_CREDENTIALS_FILE", "FSSPEC_S3_PROFILE", "AWS_PROFILE"})


def check_not_secret_env(name: str) -> str:
    """Refuse a plain environment variable that would carry a secret or bypass `objectStore`."""
    if _SECRET_ENV.search(name.upper()):
        raise ValueError(f"{name}: looks like a credential, which must not be a plain value (it would be "
                         f"in the StatefulSet and in Pulumi state); put it in a Secret and set "
                         f"{NAMESPACE}:objectStore.credentials, or use objectStore.graphEngineIdentity")
    if name in _STORE_ENV:
        raise ValueError(f"{name}: set {NAMESPACE}:objectStore.endpoint / credentials instead, so the "
                         f"connector and the servers read graphs from the same place")
    return name


def no_duplicates(values: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what} {value!r}: each must be unique")
        seen.add(value)
