"""railnet's interface-name rule against the kernel itself: every name the table in
tests/unit/test_cni_protocol.py calls valid is accepted by the kernel, every invalid one refused."""

from __future__ import annotations

import pytest

from cni.linux.netns import NetNS
from cni.spec.errors import CniError
from cni.spec.request import validate_ifname
from railnet.dev.lab import Lab
from tests.unit.test_cni_protocol import IFNAMES


def kernel_accepts(ns: NetNS, name: str) -> bool:
    try:
        ns.ipr.link("add", ifname=name, kind="bridge")
    except Exception:  # pyroute2 raises NetlinkError (EINVAL / ERANGE) for a name the kernel refuses
        return False
    ns.ipr.link("del", ifname=name)
    return True


@pytest.mark.parametrize(("name", "valid"), [c for c in IFNAMES if c[0]])  # netlink cannot send an empty name
def test_the_rule_agrees_with_the_kernel(lab: Lab, name: str, valid: bool) -> None:
    try:
        validate_ifname(name)
        ours = True
    except CniError:
        ours = False
    with NetNS(lab.netns("names")) as ns:
        assert kernel_accepts(ns, name) == ours == valid
