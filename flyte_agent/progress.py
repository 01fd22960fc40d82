"""What a person watching a fleet come up reads in GetTask's message, from its servers' states.

"2/4 servers loading partitions, 1 restarting: OOMKilled" tells a user more than a bare RUNNING:
how far the fleet is, and whether something is going wrong before the restart budget runs out.
"""

from __future__ import annotations

from collections import Counter

from flyte_agent.provisioner import ServerPhase, ServerState

# Order of the parts: what is done first, what needs attention last (where the eye ends).
_WORDS = (
    (ServerPhase.SERVING, "serving"),
    (ServerPhase.LOADING, "loading partitions"),
    (ServerPhase.PENDING, "pending"),
    (ServerPhase.UNKNOWN, "state unknown"),
    (ServerPhase.RESTARTING, "restarting"),
    (ServerPhase.FAILED, "failed"),
)


def summary(servers: list[ServerState]) -> str:
    """"2/4 servers loading partitions, 1 restarting: OOMKilled"; "" for no servers.

    The first part carries the total; a part for servers that exited names their reasons, most
    common first, so an OOM loop is visible in the message while the fleet still retries."""
    if not servers:
        return ""
    counts = Counter(s.phase for s in servers)
    parts: list[str] = []
    for phase, word in _WORDS:
        if not counts[phase]:
            continue
        count = f"{counts[phase]}/{len(servers)} servers" if not parts else str(counts[phase])
        reasons = Counter(s.reason for s in servers if s.phase is phase and s.reason)
        why = ": " + ", ".join(r for r, _ in reasons.most_common()) if reasons else ""
        parts.append(f"{count} {word}{why}")
    return ", ".join(parts)
