"""Bad input: each case gets the right CNI error code and leaves nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cni.spec import errors
from railnet.dev.lab import Lab, ip, links_in, run_plugin
from tests.netns.helpers import Env, macvlan_conf


def host_links() -> set[str]:
    return {line.split(":")[1].strip().split("@")[0] for line in ip("-o", "link").splitlines()}


def assert_error(call: Any, code: int, *words: str) -> None:
    assert call.code != 0, "expected a failure"
    assert call.output is not None and call.output["code"] == code, call.output
    text = (call.output["msg"] + " " + call.output.get("details", "")).lower()
    for word in words:
        assert word.lower() in text, call.output


CASES: list[tuple[str, Any, dict[str, str], int, tuple[str, ...]]] = [
    # (id, config (None = default), env overrides, expected code, words in the message)
    ("malformed-json", '{"cniVersion": "1.1.0", "name":', {}, errors.DECODE_FAILURE, ("json",)),
    ("not-an-object", "[1, 2]", {}, errors.DECODE_FAILURE, ("object",)),
    ("unknown-version", {"cniVersion": "9.9.9"}, {}, errors.INCOMPATIBLE_VERSION, ("9.9.9", "1.1.0")),
    ("missing-version", {"cniVersion": None}, {}, errors.INCOMPATIBLE_VERSION, ("cniVersion",)),
    ("bad-command", None, {"CNI_COMMAND": "EXPLODE"}, errors.INVALID_ENVIRONMENT, ("CNI_COMMAND",)),
    ("no-container-id", None, {"CNI_CONTAINERID": ""}, errors.INVALID_ENVIRONMENT, ("CNI_CONTAINERID",)),
    ("bad-container-id", None, {"CNI_CONTAINERID": "../x"}, errors.INVALID_ENVIRONMENT, ("CNI_CONTAINERID",)),
    ("no-netns", None, {"CNI_NETNS": ""}, errors.INVALID_ENVIRONMENT, ("CNI_NETNS",)),
    ("netns-missing", None, {"CNI_NETNS": "/var/run/netns/rnt-does-not-exist"}, errors.UNKNOWN_CONTAINER,
     ("does not exist",)),
    ("ifname-too-long", None, {"CNI_IFNAME": "a-very-long-ifname"}, errors.INVALID_ENVIRONMENT, ("15",)),
    ("ifname-slash", None, {"CNI_IFNAME": "net/1"}, errors.INVALID_ENVIRONMENT, ("/",)),
    ("ifname-space", None, {"CNI_IFNAME": "net 1"}, errors.INVALID_ENVIRONMENT, ("whitespace",)),
    ("ifname-empty", None, {"CNI_IFNAME": ""}, errors.INVALID_ENVIRONMENT, ("empty",)),
    ("master-not-found", {"master": "rnt-nonexist"}, {}, errors.MASTER_NOT_FOUND, ("rnt-nonexist",)),
    ("no-master", {"master": None}, {}, errors.INVALID_CONFIG, ("master",)),
    ("two-masters", {"pciAddress": "0000:01:00.0"}, {}, errors.INVALID_CONFIG, ("more than once",)),
    ("bad-mode", {"mode": "turbo"}, {}, errors.INVALID_CONFIG, ("mode",)),
    ("bad-mtu", {"mtu": 12}, {}, errors.INVALID_CONFIG, ("mtu",)),
    ("bad-mac", {"mac": "zz:zz"}, {}, errors.INVALID_CONFIG, ("mac",)),
    ("no-ipam", {"ipam": None}, {}, errors.INVALID_CONFIG, ("ipam",)),
    ("bad-subnet", {"ipam": {"type": "railnet-ipam", "ranges": [[{"subnet": "10.1.0.0/33"}]]}}, {},
     errors.INVALID_CONFIG, ("subnet",)),
    ("range-outside", {"ipam": {"type": "railnet-ipam", "ranges": [[{"subnet": "10.1.0.0/24",
                                                                     "rangeStart": "10.2.0.1"}]]}}, {},
     errors.INVALID_CONFIG, ("outside",)),
    ("typo-in-range", {"ipam": {"type": "railnet-ipam", "ranges": [[{"subnet": "10.1.0.0/24", "rangeStrat": "10.1.0.9"}]]}},
     {}, errors.UNSUPPORTED_FIELD, ("rangeStrat",)),
    ("unknown-pool", {"ipam": {"type": "railnet-ipam", "pool": "nope"}}, {}, errors.INVALID_CONFIG, ("nope",)),
    ("unknown-ipam-plugin", {"ipam": {"type": "no-such-ipam"}}, {}, errors.INVALID_CONFIG, ("no-such-ipam",)),
    ("mac-in-passthru", {"mode": "passthru", "mac": "02:00:00:00:00:09"}, {}, errors.INVALID_CONFIG, ("passthru",)),
    ("unknown-sysctl", {"sysctl": {"no_such_knob": "1"}}, {}, errors.INVALID_CONFIG, ("no_such_knob",)),
    ("refused-sysctl", {"sysctl": {"arp_ignore": "9999999999"}}, {}, errors.KERNEL_REFUSED, ("arp_ignore",)),
    ("sysctl-not-integer", {"sysctl": {"arp_ignore": "banana"}}, {}, errors.INVALID_CONFIG, ("arp_ignore",)),
    ("sysctl-key-climbs", {"sysctl": {"../../../../../tmp/railnet-pwned": "1"}}, {}, errors.INVALID_CONFIG,
     ("sysctl key",)),
    ("ipam-type-path", {"ipam": {"type": "/bin/sh"}}, {}, errors.INVALID_CONFIG, ("plugin type",)),
    ("ipam-type-relative", {"ipam": {"type": "../../bin/sh"}}, {}, errors.INVALID_CONFIG, ("plugin type",)),
    ("ipam-type-subdir", {"ipam": {"type": "a/b"}}, {}, errors.INVALID_CONFIG, ("plugin type",)),
    ("pci-address-escapes", {"master": None, "pciAddress": "../../../../etc"}, {}, errors.INVALID_CONFIG,
     ("pciAddress",)),
    ("rdma-device-escapes", {"master": None, "rdmaDevice": "../../../etc"}, {}, errors.INVALID_CONFIG,
     ("rdmaDevice",)),
    ("bad-cni-args", None, {"CNI_ARGS": "novalue"}, errors.INVALID_ENVIRONMENT, ("CNI_ARGS",)),
]


@pytest.mark.parametrize(("config", "env_over", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_add(env: Env, config: Any, env_over: dict[str, str], code: int, words: tuple[str, ...]) -> None:
    pod = env.lab.netns("pod")
    before = host_links()
    if config is None or isinstance(config, dict):
        conf: Any = macvlan_conf(env.nic)
        for key, value in (config or {}).items():
            if value is None:
                conf.pop(key, None)
            else:
                conf[key] = value
    else:
        conf = config
    call = env.call("railnet-macvlan", env_over.pop("CNI_COMMAND", "ADD"), conf, cid=env_over.pop("CNI_CONTAINERID", "c1"),
                    ifname=env_over.pop("CNI_IFNAME", "net1"), netns=env_over.pop("CNI_NETNS", pod),
                    args=env_over.pop("CNI_ARGS", ""))
    assert_error(call, code, *words)
    assert host_links() == before
    env.assert_clean(pod)


def test_pool_exhausted_leaves_nothing(env: Env) -> None:
    tiny = {"type": "railnet-ipam", "ranges": [[{"subnet": "10.92.0.0/30"}]]}  # .1 gateway, .2 usable
    pods = [env.lab.netns("a"), env.lab.netns("b")]
    conf = macvlan_conf(env.nic, ipam=tiny)
    assert env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="net1", netns=pods[0]).ok
    second = env.call("railnet-macvlan", "ADD", conf, cid="c2", ifname="net1", netns=pods[1])
    assert_error(second, errors.POOL_EXHAUSTED, "10.92.0.0/30", "no free")
    assert links_in(pods[1]) == ["lo"] and env.allocations() == 1 and env.records() == 1
    # STATUS reports the exhaustion with the spec's "not available" code
    assert_error(env.call("railnet-macvlan", "STATUS", conf), errors.NOT_AVAILABLE, "exhausted")
    assert env.call("railnet-macvlan", "DEL", conf, cid="c1", ifname="net1", netns=pods[0]).ok
    assert env.call("railnet-macvlan", "STATUS", conf).ok
    env.assert_clean(*pods)


def test_add_of_existing_attachment(env: Env) -> None:
    pod = env.lab.netns("pod")
    conf = macvlan_conf(env.nic)
    first = env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="net1", netns=pod)
    assert first.ok
    again = env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="net1", netns=pod)
    assert_error(again, errors.INTERFACE_EXISTS, "already exists", "DEL")
    assert env.allocations() == 1 and links_in(pod) == ["lo", "net1"]  # the first one is untouched
    assert env.call("railnet-macvlan", "DEL", conf, cid="c1", ifname="net1", netns=pod).ok
    env.assert_clean(pod)


def test_interface_name_taken_by_someone_else(env: Env) -> None:
    pod = env.lab.netns("pod")
    ip("-n", Path(pod).name, "link", "add", "net1", "type", "veth", "peer", "name", "other")
    call = env.call("railnet-macvlan", "ADD", macvlan_conf(env.nic), cid="c1", ifname="net1", netns=pod)
    assert_error(call, errors.INTERFACE_EXISTS, "net1")
    assert env.allocations() == 0 and env.records() == 0
    # DEL must not delete an interface railnet did not create
    assert env.call("railnet-macvlan", "DEL", macvlan_conf(env.nic), cid="c1", ifname="net1", netns=pod).ok
    assert "net1" in links_in(pod)


def test_del_twice_and_del_never_added(env: Env) -> None:
    pod = env.lab.netns("pod")
    conf = macvlan_conf(env.nic)
    assert env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="net1", netns=pod).ok
    for _ in range(2):
        assert env.call("railnet-macvlan", "DEL", conf, cid="c1", ifname="net1", netns=pod).ok
    assert env.call("railnet-macvlan", "DEL", conf, cid="never", ifname="net9", netns=pod).ok
    # DEL with the netns already gone also succeeds, and releases the IP
    other = env.lab.netns("gone")
    assert env.call("railnet-macvlan", "ADD", conf, cid="c2", ifname="net1", netns=other).ok
    ip("netns", "del", Path(other).name)
    env.lab.namespaces.remove(Path(other).name)
    assert env.call("railnet-macvlan", "DEL", conf, cid="c2", ifname="net1", netns=other).ok
    assert env.call("railnet-macvlan", "DEL", conf, cid="c2", ifname="net1", netns="").ok
    env.assert_clean(pod)


def test_check_after_interface_removed_by_hand(env: Env) -> None:
    pod = env.lab.netns("pod")
    conf = macvlan_conf(env.nic)
    add = env.call("railnet-macvlan", "ADD", conf, cid="c1", ifname="net1", netns=pod)
    assert add.ok
    ip("-n", Path(pod).name, "link", "del", "net1")
    check = env.call("railnet-macvlan", "CHECK", {**conf, "prevResult": add.output}, cid="c1", ifname="net1", netns=pod)
    assert_error(check, errors.CHECK_FAILED, "missing", "net1")
    assert env.call("railnet-macvlan", "DEL", conf, cid="c1", ifname="net1", netns=pod).ok
    env.assert_clean(pod)


def test_check_of_unknown_attachment(env: Env) -> None:
    pod = env.lab.netns("pod")
    call = env.call("railnet-macvlan", "CHECK", macvlan_conf(env.nic), cid="zz", ifname="net1", netns=pod)
    assert_error(call, errors.CHECK_FAILED, "no attachment")


def test_agent_unreachable_names_the_socket(lab: Lab) -> None:
    bin_dir = lab.install_shim()
    sock = "/run/rnt-nowhere/agent.sock"
    call = run_plugin(bin_dir / "railnet-macvlan", "ADD", macvlan_conf("eth0"), container_id="c1", ifname="net1",
                      netns="/proc/self/ns/net", env={"RAILNET_AGENT_SOCKET": sock})
    assert_error(call, errors.TRY_AGAIN_LATER, sock)
    # the config key works too (only under /run/railnet/), and VERSION is answered without the agent
    in_run = "/run/railnet/rnt-nowhere.sock"
    conf = {**macvlan_conf("eth0"), "agentSocket": in_run}
    call = run_plugin(bin_dir / "railnet-macvlan", "ADD", json.dumps(conf), container_id="c1", ifname="net1",
                      netns="/proc/self/ns/net", env={"RAILNET_AGENT_SOCKET": ""})
    assert_error(call, errors.TRY_AGAIN_LATER, in_run)
    version = run_plugin(bin_dir / "railnet-macvlan", "VERSION", {"cniVersion": "1.0.0"}, env={"RAILNET_AGENT_SOCKET": sock})
    assert version.ok and version.output == {"cniVersion": "1.0.0",
                                             "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_unknown_plugin_name(env: Env) -> None:
    renamed = env.bin_dir / "railnet-bogus"
    shutil.copy(env.bin_dir / "railnet-macvlan", renamed)
    call = env.call("railnet-bogus", "ADD", macvlan_conf(env.nic), cid="c1", ifname="net1", netns=env.lab.netns("p"))
    assert_error(call, errors.INVALID_CONFIG, "railnet-bogus")


def test_status_reports_a_down_nic_as_limited_connectivity(env: Env) -> None:
    conf = macvlan_conf(env.nic)
    assert env.call("railnet-macvlan", "STATUS", conf).ok
    ip("link", "set", env.nic + "p", "down")  # the switch side goes away: no carrier on the NIC
    assert_error(env.call("railnet-macvlan", "STATUS", conf), errors.LIMITED_CONNECTIVITY, "down")
    ip("link", "set", env.nic + "p", "up")
    assert env.call("railnet-macvlan", "STATUS", conf).ok
