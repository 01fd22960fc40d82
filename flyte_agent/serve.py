"""Imported by `pyflyte serve connector --modules flyte_agent.serve` (the connector Deployment's
command): builds the connector's settings and provisioner before the server takes any call.

Building the Pulumi provisioner imports all of pulumi_kubernetes and runs `pulumi version` (~3.4 s);
built on first use, the first CreateTask paid for it. `flyte_agent.connector` cannot build it when
imported: importing flytekit loads that module everywhere (training pods, `pyflyte run`) through the
`flytekit.plugins` entry point, where no connector settings exist. Only the serve command names
this module, so only a serving connector builds at start, and a bad `GRAPHFLEET_*` setting stops it
there with the `SettingsError` that names the variable. A SIGTERM drains the provisioner
(flyte_agent/drain.py) before the process exits.
"""

from flyte_agent import grpc_server
from flyte_agent.connector import provisioning
from flyte_agent.drain import drain_on_sigterm

settings, provisioner = provisioning.get()
# Before flytekit builds its server: connection age (round robin reaches new replicas) and TLS.
grpc_server.install(settings.grpc_max_connection_age_seconds, settings.tls_dir)
_drain = getattr(provisioner, "drain", None)
if _drain is not None:  # the Pulumi provisioner: cancel its CLI operations gracefully on SIGTERM
    drain_on_sigterm(_drain)
