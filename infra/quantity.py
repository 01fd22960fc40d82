"""Kubernetes resource quantities ("500m", "4", "32Gi") parsed for validation and comparison."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]+)?)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")


def _parse(value: str, what: str, example: str) -> tuple[Decimal, str]:
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise ValueError(f"{what} must be a positive Kubernetes quantity such as {example}, got {value!r}")
    try:
        number = Decimal(match["number"])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"{what} {value!r} is not a number") from exc
    if number <= 0:
        raise ValueError(f"{what} must be greater than zero, got {value!r}")
    return number, match["suffix"] or ""


def parse_cpu(value: str) -> Decimal:
    """CPU in cores: "500m" -> 0.5, "4" -> 4."""
    number, suffix = _parse(value, "cpu", "'500m' or '4'")
    if suffix == "m":
        return number / 1000
    if suffix:
        raise ValueError(f"cpu takes cores ('4') or millicores ('500m'), got {value!r}")
    return number


def parse_memory(value: str) -> int:
    """Memory in bytes: "32Gi" -> 34359738368. Millibytes ("m") are refused: always a typo."""
    number, suffix = _parse(value, "memory", "'512Mi' or '32Gi'")
    if suffix == "m":
        raise ValueError(f"memory {value!r} is in millibytes; did you mean {number}Mi?")
    factor = _BINARY.get(suffix) or _DECIMAL[suffix]
    return int(number * factor)
