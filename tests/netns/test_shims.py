"""The native and the Python shim are two builds of one program: same bytes out, same exit code.

Here against the real agent; tests/unit/test_shim_parity.py drives both against fake agents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from railnet.dev.lab import Lab, PluginCall, run_plugin
from tests.netns.helpers import Env, macvlan_conf


@pytest.fixture
def shims(lab: Lab) -> dict[str, Path]:
    return {kind: lab.install_shim(kind) for kind in ("native", "python")}


def both(shims: dict[str, Path], config: dict[str, Any] | str, env: dict[str, str], **kw: Any) -> list[PluginCall]:
    command = env.pop("CNI_COMMAND")
    return [run_plugin(shims[k] / "railnet-macvlan", command, config, env=dict(env), **kw) for k in ("native", "python")]


def same(calls: list[PluginCall]) -> PluginCall:
    native, python = calls
    assert (native.code, native.output) == (python.code, python.output)
    return native


UNREACHABLE = {"RAILNET_AGENT_SOCKET": "/run/rnt-none/agent.sock"}


@pytest.mark.parametrize(("config", "env"), [
    (macvlan_conf("eth0", "0.4.0"), {"CNI_COMMAND": "ADD", **UNREACHABLE}),
    ({**macvlan_conf("eth0"), "agentSocket": "/run/railnet/rnt-cfg.sock"}, {"CNI_COMMAND": "DEL", "RAILNET_AGENT_SOCKET": ""}),
    ({**macvlan_conf("eth0"), "agentSocket": "/run/rnt-cfg/a.sock"}, {"CNI_COMMAND": "DEL", "RAILNET_AGENT_SOCKET": ""}),
    ({**macvlan_conf("eth0"), "ipam": {"agentSocket": "/run/railnet/rnt-n.sock"}}, {"CNI_COMMAND": "DEL", "RAILNET_AGENT_SOCKET": ""}),
    ({"cniVersion": "1.0.0"}, {"CNI_COMMAND": "VERSION", **UNREACHABLE}),
    ({"cniVersion": "7.0.0"}, {"CNI_COMMAND": "VERSION", **UNREACHABLE}),
    ('{"cniVersion": "1.0.0", "name": "x\\"y"}', {"CNI_COMMAND": "ADD", **UNREACHABLE}),
])
def test_agent_down_answers_match(shims: dict[str, Path], config: Any, env: dict[str, str]) -> None:
    if env.get("RAILNET_AGENT_SOCKET") == "" and Path("/run/railnet/agent.sock").exists():
        pytest.skip("a real agent listens on /run/railnet/agent.sock")
    call = same(both(shims, config, env, container_id="c1", ifname="net1", netns="/proc/self/ns/net"))
    assert call.output is not None and "cniVersion" in call.output
    if isinstance(config, dict) and "agentSocket" in config:  # only a top-level key under /run/railnet/ counts
        socket = config["agentSocket"] if config["agentSocket"].startswith("/run/railnet/") else "/run/railnet/agent.sock"
        assert call.output["msg"] == f"railnet agent is not reachable at {socket}"


def test_agent_up_answers_match(env: Env, shims: dict[str, Path]) -> None:
    pod = env.lab.netns("pod")
    agent_env = env.agent.env()
    cases: list[tuple[Any, str, str]] = [
        ("{not json", "ADD", pod),
        (macvlan_conf(env.nic, "9.9.9"), "ADD", pod),
        (macvlan_conf("rnt-missing"), "ADD", pod),
        (macvlan_conf(env.nic), "ADD", "/var/run/netns/rnt-nope"),
        ({"cniVersion": "1.0.0"}, "VERSION", ""),
        (macvlan_conf(env.nic), "STATUS", ""),
        (macvlan_conf(env.nic), "DEL", pod),
    ]
    for config, command, netns in cases:
        same(both(shims, config, {"CNI_COMMAND": command, **agent_env}, container_id="c1", ifname="net1",
                  netns=netns, args="K8S_POD_NAME=a;K8S_POD_NAMESPACE=b=c"))
    # a successful ADD through each, with a large prevResult (about 1 MiB) riding along
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": f"x{i}", "sandbox": "s" * 100} for i in range(8000)]}
    for kind, cid in (("native", "n1"), ("python", "p1")):
        conf = macvlan_conf(env.nic, prevResult=prev)
        add = run_plugin(shims[kind] / "railnet-macvlan", "ADD", conf, container_id=cid, ifname="net1",
                         netns=env.lab.netns(kind), env=agent_env)
        assert add.ok and add.output is not None and len(add.output["interfaces"]) == 8001, add.output
        assert add.output["interfaces"][:8000] == prev["interfaces"]  # the whole prevResult came through
        assert run_plugin(shims[kind] / "railnet-macvlan", "DEL", conf, container_id=cid, ifname="net1",
                          netns=env.lab.tmp.as_posix(), env=agent_env).ok
    assert env.allocations() == 0
