"""Network domains from node labels: leaf < spine < zone < cluster.

The label keys are configurable (narrowest first). A domain at level ``l`` is identified by the
label values from level ``l`` up to the widest level, widest first, e.g. ``("z1", "s3", "l7")``
for a leaf; the cluster is ``()``. A node missing a label gets a domain of its own at that level
(it shares that switch with nobody as far as we know), so missing labels never fake locality.

The index also keeps the number of fully free GPUs per domain, an upper bound that lets gang
placement skip domains that cannot hold the gang without visiting their nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

DEFAULT_DOMAIN_KEYS: tuple[str, ...] = ("railnet.io/leaf", "railnet.io/spine", "railnet.io/zone")

DomainId = tuple[str, ...]


class _Labelled(Protocol):
    @property
    def index(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...


class DomainIndex:
    def __init__(self, nodes: Iterable[_Labelled], keys: tuple[str, ...] = DEFAULT_DOMAIN_KEYS) -> None:
        self.keys = keys
        self.levels = len(keys) + 1  # the last level is the whole cluster
        self.paths: list[tuple[DomainId, ...]] = []
        self.members: list[dict[DomainId, list[int]]] = [{} for _ in range(self.levels)]
        self.children: list[dict[DomainId, list[DomainId]]] = [{} for _ in range(self.levels)]
        self.whole_free: list[dict[DomainId, int]] = [{} for _ in range(self.levels)]
        kids: list[dict[DomainId, set[DomainId]]] = [{} for _ in range(self.levels)]
        for node in nodes:
            path = self._path(node)
            self.paths.append(path)
            for level, dom in enumerate(path):
                self.members[level].setdefault(dom, []).append(node.index)
                self.whole_free[level].setdefault(dom, 0)
                if level:
                    kids[level].setdefault(dom, set()).add(path[level - 1])
        for level in range(1, self.levels):
            self.children[level] = {dom: sorted(found) for dom, found in kids[level].items()}

    def _path(self, node: _Labelled) -> tuple[DomainId, ...]:
        values = [node.labels.get(key) or f"?{node.name}" for key in self.keys]
        # level l holds values[l:], widest first
        return tuple(tuple(reversed(values[level:])) for level in range(self.levels))

    def level_name(self, level: int) -> str:
        return self.keys[level] if level < len(self.keys) else "cluster"

    def domain_of(self, node_index: int, level: int) -> DomainId:
        return self.paths[node_index][level]

    def add_free(self, node: _Labelled, delta: int) -> None:
        for level, dom in enumerate(self.paths[node.index]):
            self.whole_free[level][dom] += delta

    def common_level(self, a: int, b: int) -> int:
        """Narrowest level at which two nodes share a domain (0 = same leaf)."""
        pa, pb = self.paths[a], self.paths[b]
        for level in range(self.levels):
            if pa[level] == pb[level]:
                return level
        return self.levels - 1
