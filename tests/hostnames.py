"""Run a process under its own hostname, as each connector pod has one (a pod's hostname is its name):
`unshare --uts` gives the process a UTS namespace of its own, so `socket.gethostname()` in Python and
`os.Hostname()` in the pulumi CLI it starts both answer `hostname`. It needs root (CI and these
machines run tests as root); `needs_uts` skips with that reason elsewhere."""

from __future__ import annotations

import os
import shutil

import pytest

needs_uts = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="distinct replica hostnames need root and unshare (a UTS namespace per replica)")


def under_hostname(hostname: str, argv: list[str]) -> list[str]:
    """`argv` run with `hostname`; no fork, so the process keeps the pid Popen reports."""
    return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *argv]
