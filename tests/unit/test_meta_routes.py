"""`default-route` decisions without a kernel: the ECMP refusal, the gateway chosen per family
(explicit, or the network's own for an empty list), the clear error without one, the edited
results, and the meta plugin calling the kernel step with the right choices (the netns part is
tests/netns/test_meta_default_route.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cni.meta import routes
from cni.meta.plugin import Pod
from cni.meta.selection import parse_selections
from cni.spec import errors
from cni.spec.errors import CniError
from tests.unit.test_meta_flow import FakeCluster, Recorder, meta_conf, nad, plugin, request


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    d = tmp_path / "net.d"
    d.mkdir()
    (d / "10-calico.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [{"type": "calico"}]}))
    return d


def result(ifname: str, *ips: tuple[str, str | None], routes_: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": "1.0.0", "interfaces": [{"name": ifname, "sandbox": "/x"}],
                           "ips": [{"address": a, "interface": 0, **({"gateway": g} if g else {})} for a, g in ips]}
    if routes_ is not None:
        out["routes"] = routes_
    return out


def test_absent_empty_and_listed_are_told_apart() -> None:
    sels = parse_selections('[{"name": "a"}, {"name": "b", "default-route": []}, '
                            '{"name": "c", "default-route": ["10.1.0.1", "fd00::1"]}]', "ml")
    assert [s.default_route for s in sels] == [None, [], ["10.1.0.1", "fd00::1"]]


def test_more_than_one_gateway_per_family_is_refused_before_anything_runs() -> None:
    routes.check_requests([("pods", None), ("ml/a", ["10.1.0.1"]), ("ml/b", ["fd00::1"])])  # one per family
    with pytest.raises(CniError) as exc:
        routes.check_requests([("pods", None), ("ml/a", ["10.1.0.1"]), ("ml/b", ["10.2.0.1"])])
    assert exc.value.code == errors.INVALID_CONFIG and "ml/a" in exc.value.details and "ml/b" in exc.value.details


def test_an_explicit_gateway_wins_and_an_empty_list_takes_the_networks_own() -> None:
    delegates = [("pods", "eth0", None), ("ml/a", "net1", ["10.1.0.254"])]
    results = [result("eth0", ("10.62.0.5/24", "10.62.0.1")), result("net1", ("10.1.0.5/24", "10.1.0.1"))]
    assert routes.choose(delegates, results) == [routes.Choice(4, 1, "net1", "ml/a", "10.1.0.254")]
    delegates[1] = ("ml/a", "net1", [])
    results[1] = result("net1", ("10.1.0.5/24", "10.1.0.1"), ("fd00:1::5/64", "fd00:1::1"), ("10.9.0.5/24", "10.9.0.1"))
    assert routes.choose(delegates, results) == [routes.Choice(4, 1, "net1", "ml/a", "10.1.0.1"),
                                                 routes.Choice(6, 1, "net1", "ml/a", "fd00:1::1")]
    assert routes.choose([("pods", "eth0", None)], results[:1]) == []


def test_a_network_without_a_gateway_is_a_clear_error() -> None:
    with pytest.raises(CniError) as exc:
        routes.choose([("pods", "eth0", None), ("ml/a", "net1", [])],
                      [result("eth0", ("10.62.0.5/24", "10.62.0.1")), result("net1", ("10.1.0.5/24", None))])
    assert exc.value.code == errors.INVALID_CONFIG
    assert "ml/a (net1) has default-route but no gateway" in exc.value.msg and "default-route" in exc.value.details


def test_two_networks_each_with_their_own_gateway_are_refused() -> None:
    with pytest.raises(CniError) as exc:
        routes.choose([("ml/a", "net1", []), ("ml/b", "net2", [])],
                      [result("net1", ("10.1.0.5/24", "10.1.0.1")), result("net2", ("10.2.0.5/24", "10.2.0.1"))])
    assert "more than one IPv4 gateway" in exc.value.msg


def test_results_are_edited_to_what_the_pod_has() -> None:
    primary = result("eth0", ("10.62.0.5/24", "10.62.0.1"),
                     routes_=[{"dst": "0.0.0.0/0", "gw": "10.62.0.1"}, {"dst": "::/0"}, {"dst": "10.0.0.0/8"},
                              {"dst": "0.0.0.0/0", "gw": "10.62.0.1", "table": 100}])
    assert routes.edit_result(primary, 4, None)["routes"] == [{"dst": "::/0"}, {"dst": "10.0.0.0/8"},
                                                             {"dst": "0.0.0.0/0", "gw": "10.62.0.1", "table": 100}]
    assert routes.edit_result(result("net1"), 4, "10.1.0.1")["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]
    assert "routes" not in routes.edit_result(result("net1"), 4, None)


def test_the_host_namespace_is_refused() -> None:
    with pytest.raises(CniError) as exc:
        routes.apply("/proc/self/ns/net", ["eth0"], [routes.Choice(4, 0, "eth0", "x", "10.0.0.1")])
    assert "own network namespace" in exc.value.msg


def test_the_plugin_moves_the_default_route_after_every_delegate(tmp_path: Path, conf_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    applied: list[tuple[list[str], list[routes.Choice]]] = []
    monkeypatch.setattr(routes, "apply", lambda netns, ifnames, choices: applied.append((ifnames, choices)))
    pod = Pod("ml", "trainer-0", "u1", {"k8s.v1.cni.cncf.io/networks": json.dumps(
        [{"name": "rail0"}, {"name": "rail1", "default-route": []}])})
    run = Recorder()
    meta, store = plugin(tmp_path, FakeCluster(pod, {"ml/rail0": nad("railnet-macvlan"),
                                                     "ml/rail1": nad("railnet-macvlan")}), run)
    meta.add(request("ADD", meta_conf(conf_dir)))
    assert len(applied) == 1
    ifnames, choices = applied[0]
    assert ifnames == ["eth0", "net1", "net2"] and [(c.family, c.ifname) for c in choices] == [(4, "net2")]
    record = store.get("c1", "eth0")
    assert record is not None
    recorded = record.result["results"]  # CHECK will expect these routes
    assert recorded[2]["routes"] == [{"dst": "0.0.0.0/0", "gw": choices[0].gateway}]
    assert "routes" not in recorded[0] and "routes" not in recorded[1]


def test_no_default_route_asked_no_kernel_step(tmp_path: Path, conf_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes, "apply", lambda *a: pytest.fail("apply called"))
    pod = Pod("ml", "trainer-0", "u1", {"k8s.v1.cni.cncf.io/networks": "rail0"})
    meta, _ = plugin(tmp_path, FakeCluster(pod, {"ml/rail0": nad("railnet-macvlan")}), Recorder())
    meta.add(request("ADD", meta_conf(conf_dir)))
