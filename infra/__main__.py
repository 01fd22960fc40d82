"""The Pulumi program of `pulumi up -s <datacenter>` (Pulumi.yaml: `main: infra/`).

The stack's config is validated before any resource is declared: a bad stack file fails with
the file, key and fix, and changes nothing.
"""

from infra.datacenter import config_from_pulumi, program

program(config_from_pulumi())
