"""`railnet ipam audit` over a fake API: fixed-IP claims inside a node's block are not overlaps, but a claim
outside the pool's fixedRanges, overlapping node blocks, a double-held address and leaks are reported."""

from __future__ import annotations

from typing import Any

from ipam.audit import audit

POOL = {"metadata": {"name": "p"}, "spec": {"subnet": "10.9.0.0/24", "blockSize": 26,
                                            "fixedRanges": [{"start": "10.9.0.240", "end": "10.9.0.250"}]}}


def _block(cidr: str, node: str = "n1", res: str | None = None, allocs: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"pool": "p", "cidr": cidr, "node": node}
    if res:
        spec["reservation"] = res
    return {"metadata": {"name": f"p-{cidr}"}, "spec": spec,
            "status": {"allocations": [{"address": a, "containerId": f"c{a}", "ifname": "net1"}
                                       for a in allocs or []]}}


class FakeApi:
    def __init__(self, blocks: list[dict[str, Any]], reservations: tuple[str, ...] = ("ns/r1",)) -> None:
        self.blocks = blocks
        self.reservations = reservations

    def list_pools(self) -> dict[str, Any]:
        return {"items": [POOL]}

    def list_blocks(self) -> list[dict[str, Any]]:
        return self.blocks

    def list_reservations(self) -> list[dict[str, Any]]:
        return [{"metadata": {"namespace": r.split("/")[0], "name": r.split("/")[1]}} for r in self.reservations]

    def list_node_names(self) -> set[str]:
        return {"n1", "n2"}

    def list_pod_keys(self) -> set[str]:
        return set()


def test_fixed_claim_inside_a_node_block_is_clean() -> None:
    rep = audit(FakeApi([_block("10.9.0.192/26", allocs=["10.9.0.193"]),
                         _block("10.9.0.241/32", node="", res="ns/r1")]))  # type: ignore[arg-type]
    assert rep.clean, rep.lines()
    assert rep.pools["p"]["allocated"] == 1 and rep.pools["p"]["reserved"] == 1


def test_problems_are_named() -> None:
    rep = audit(FakeApi([  # type: ignore[arg-type]
        _block("10.9.0.0/26", allocs=["10.9.0.5"]),
        _block("10.9.0.0/25", node="n2", allocs=["10.9.0.5"]),       # overlaps, and holds .5 again
        _block("10.9.0.10/32", node="", res="ns/r1"),                 # claim outside fixedRanges
        _block("10.9.0.242/32", node="", res="ns/gone"),              # reservation deleted
        _block("10.9.0.64/26", node="n9"),                            # node deleted
    ]))
    text = "\n".join(rep.lines())
    assert "10.9.0.5 is held 2 times" in text
    assert "overlap" in text
    assert "outside the fixedRanges" in text
    assert "reservation ns/gone, which does not exist" in text
    assert "node 'n9', which does not exist" in text
    assert not rep.clean
