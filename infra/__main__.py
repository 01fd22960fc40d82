"""The Pulumi program of `pulumi up -s <datacenter>` (Pulumi.yaml: `main: infra/`).

The stack's config is validated before any resource is declared: a bad stack file fails with
the file, key and fix, and changes nothing; then the cluster of `kubernetes:context` is checked
for what must exist before the stack (CRDs, namespaces, the Secrets its pods read:
`infra/prerequisites.py`).
"""

from infra import prerequisites
from infra.datacenter import config_from_pulumi, program

config = config_from_pulumi()
prerequisites.check(config)
program(config)
