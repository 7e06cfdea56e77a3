"""Bad chart values fail the render (before anything reaches the cluster) with a message that says what
to fix: the schema (values.schema.json) for types and names, the templates (_validate.tpl) for what a
schema cannot say (CIDRs, ranges inside their subnet, components that need each other)."""

from __future__ import annotations

import pytest

from tests.unit.chart_support import GOOD, render, render_error


def pools(extra: str = "", subnet: str = "172.30.0.0/16", name: str = "rail0") -> tuple[str, ...]:
    """--set-json for one pool; `extra` continues its JSON object (',"gateway":"..."')."""
    return ("--set-json", f'pools=[{{"name":"{name}","subnet":"{subnet}"{extra}}}]')


CASES = [
    # the primary network: required, a file name in the conf dir, not railnet's own
    ("no primary conflist", (), ["cni.primaryConflist is empty", "10-calico.conflist", "/etc/cni/net.d"]),
    ("empty primary conflist", ("--set", "cni.primaryConflist="), ["cni.primaryConflist is empty"]),
    ("primary conflist with a directory", ("--set", "cni.primaryConflist=/etc/cni/net.d/10-calico.conflist"),
     ["must be a file name in cni.confDir"]),
    ("primary conflist without a CNI suffix", ("--set", "cni.primaryConflist=calico"),
     ["ending in .conflist, .conf or .json"]),
    ("railnet's own conflist as the primary", ("--set", "cni.primaryConflist=00-railnet.conflist"),
     ["railnet's own 00-railnet.conflist"]),
    # components
    ("an unknown component", (*GOOD, "--set", "components.multus=true"),
     ["components.multus: unknown component; known: node, dra, controller, scheduler, ipam"]),
    ("a component that is not a boolean", (*GOOD, "--set", "components.node=maybe"), ["at '/components/node': got string, want boolean"]),
    ("dra without the node agent", (*GOOD, "--set", "components.node=false"),
     ["components.dra needs components.node"]),
    # pools
    ("a subnet that is not a CIDR", (*GOOD, *pools(subnet="172.30.0.0")),
     ["pools[0] (rail0): subnet \"172.30.0.0\" is not a CIDR", "e.g. 172.30.0.0/16"]),
    ("a subnet with a bad address", (*GOOD, *pools(subnet="172.300.0.0/16")), ["is not a CIDR"]),
    ("a subnet with a prefix over 32", (*GOOD, *pools(subnet="172.30.0.0/33")), ["is not a CIDR"]),
    ("a subnet with host bits", (*GOOD, *pools(subnet="172.30.0.1/16")), ["has host bits set"]),
    ("an IPv6 subnet that is not a CIDR", (*GOOD, *pools(subnet="fd00:30::")), ["is not a CIDR", "fd00:30::/64"]),
    ("a range outside the subnet", (*GOOD, *pools(',"ranges":[{"start":"172.30.0.10","end":"172.31.0.5"}]')),
     ["pools[0] (rail0): ranges[0] end: 172.31.0.5 is not inside subnet 172.30.0.0/16",
      "fix the address or the subnet"]),
    ("a range starting below the subnet", (*GOOD, *pools(',"ranges":[{"start":"172.29.255.1","end":"172.30.0.5"}]')),
     ["ranges[0] start: 172.29.255.1 is not inside subnet 172.30.0.0/16"]),
    ("a range that is backwards", (*GOOD, *pools(',"ranges":[{"start":"172.30.0.9","end":"172.30.0.5"}]')),
     ["start 172.30.0.9 is above end 172.30.0.5: swap them"]),
    ("a range end that is not an address", (*GOOD, *pools(',"ranges":[{"start":"172.30.0.1","end":"x"}]')),
     ["ranges[0] end: \"x\" is not an IPv4 address"]),
    ("a range without an end", (*GOOD, *pools(',"ranges":[{"start":"172.30.0.1"}]')),
     ["at '/pools/0/ranges/0': missing property 'end'"]),
    ("a gateway outside the subnet", (*GOOD, *pools(',"gateway":"10.0.0.1"')),
     ["gateway: 10.0.0.1 is not inside subnet 172.30.0.0/16"]),
    ("fixed ranges outside the subnet", (*GOOD, *pools(',"fixedRanges":[{"start":"172.30.0.1","end":"172.40.0.1"}]')),
     ["fixedRanges[0] end: 172.40.0.1 is not inside"]),
    ("a block bigger than the subnet", (*GOOD, *pools(',"blockSize":8')),
     ["blockSize 8 must be a prefix length between the subnet's /16 and /32"]),
    ("an unknown pool field", (*GOOD, *pools(',"cidr":"10.0.0.0/8"')), ["cidr", "not allowed"]),
    ("a pool without a subnet", (*GOOD, "--set-json", 'pools=[{"name":"rail0"}]'), ["at '/pools/0': missing property 'subnet'"]),
    ("a pool name with capitals", (*GOOD, *pools(name="Rail0")), ["name must be a DNS subdomain"]),
    ("two pools with one name", (*GOOD, "--set-json",
                                 'pools=[{"name":"a","subnet":"10.0.0.0/24"},{"name":"a","subnet":"10.0.1.0/24"}]'),
     ["pools[1]: the name a is used twice"]),
    # rails
    ("a rail without a parent NIC", (*GOOD, "--set-json", 'rails=[{"name":"rail0"}]'),
     ["rails[0] (rail0): give exactly one of rdmaDevice, master or pciAddress (the rail's parent NIC), or auto: true"]),
    ("an auto rail naming a NIC", (*GOOD, "--set-json", 'rails=[{"name":"rails","auto":true,"master":"eth1"}]'),
     ["rails[0] (rails): an auto rail takes each pod's NICs from the scheduler's allocation"]),
    ("an auto rail with one pool for all rails", (*GOOD, "--set-json", 'rails=[{"name":"rails","auto":true,"pool":"rail"}]'),
     ["pool \"rail\" of an auto rail must contain {rail}"]),
    ("a rail with two parents", (*GOOD, "--set-json", 'rails=[{"name":"rail0","master":"eth1","rdmaDevice":"mlx5_0"}]'),
     ["give exactly one of"]),
    # other values
    ("an agent socket outside /run/railnet", (*GOOD, "--set", "node.socket=/tmp/a.sock"), ["at '/node/socket': '/tmp/a.sock' does not match pattern '^/run/railnet/'"]),
    ("an unknown admission mode", (*GOOD, "--set", "controller.admission=fifo"), ["at '/controller/admission': value must be one of 'none', 'quota'"]),
    ("a misspelt top-level value", (*GOOD, "--set", "pool[0].name=x"), ["pool", "not allowed"]),
]


@pytest.mark.parametrize(("values", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_values_fail_with_what_to_fix(values: tuple[str, ...], expected: list[str]) -> None:
    message = render_error(*values)
    for part in expected:
        assert part in message, f"{part!r} not in helm's message:\n{message}"


def test_good_pools_render() -> None:
    docs = render(*pools(',"gateway":"172.30.0.1","blockSize":26,"fixedRanges":[{"start":"172.30.255.1",'
                         '"end":"172.30.255.254"}],"ranges":[{"start":"172.30.0.0","end":"172.30.255.255"}]'),
                  "--set-json", 'rails=[{"name":"rail0","master":"eth1"}]')
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "IPPool"] == ["rail0"]
    v6 = render(*pools(subnet="fd00:30::/64"))
    assert [d["spec"]["subnet"] for d in v6 if d["kind"] == "IPPool"] == ["fd00:30::/64"]
