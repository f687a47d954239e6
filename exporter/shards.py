"""Sharding, kube-state-metrics style: replica N of M polls and counts only the scopes whose stable hash
falls in its shard, and forwards writes for other scopes to their owner.

The key of a run is its scope (thread), or its own id when it has none; a scope's runs therefore live on one
replica, whichever source reports them. The hash is SHA-256 (Python's `hash()` is salted per process).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_ORDINAL = re.compile(r"-(\d+)$")


@dataclass(frozen=True, slots=True)
class Sharding:
    shard: int = 0
    total: int = 1
    peer_url: str | None = None  # e.g. "http://assistants-exporter-{shard}.assistants-exporter:9788"

    def owner(self, key: str) -> int:
        if self.total == 1:
            return 0
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:8], "big") % self.total

    def owns(self, key: str) -> bool:
        return self.total == 1 or self.owner(key) == self.shard

    def peer(self, shard: int) -> str:
        if self.peer_url is None:
            raise ValueError("no --shard-peer-url")
        return self.peer_url.replace("{shard}", str(shard)).rstrip("/")


def run_key(scope: str, run_id: str) -> str:
    """What decides a run's shard: its scope, else its id."""
    return scope or run_id


def ordinal(hostname: str) -> int | None:
    """The StatefulSet ordinal at the end of a pod's hostname: 'name-3' -> 3."""
    match = _ORDINAL.search(hostname.split(".", 1)[0])
    return int(match.group(1)) if match else None
