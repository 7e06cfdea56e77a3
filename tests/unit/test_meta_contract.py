"""The Multus user contract as the meta plugin reads it: the networks annotation in both forms,
NetworkAttachmentDefinitions, and the network-status it writes back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni.meta.nad import from_nad
from cni.meta.selection import parse_selections
from cni.meta.status import pci_device_info, status_entry
from cni.spec import errors
from cni.spec.errors import CniError

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
ifname = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True).filter(lambda n: n != "eth0")


@given(st.lists(st.tuples(st.none() | label, label, st.none() | ifname), min_size=1, max_size=6))
def test_text_form_round_trips(entries: list[tuple[str | None, str, str | None]]) -> None:
    text = ", ".join(f"{ns + '/' if ns else ''}{name}{'@' + ifn if ifn else ''}" for ns, name, ifn in entries)
    names = [ifn or f"net{i + 1}" for i, (_, _, ifn) in enumerate(entries)]
    if len(set(names)) < len(names):  # two networks on one interface: refused, never silently merged
        with pytest.raises(CniError) as exc:
            parse_selections(text, "pods")
        assert exc.value.code == errors.INVALID_CONFIG and "used twice" in exc.value.msg
        return
    got = parse_selections(text, "pods")
    assert [(s.namespace, s.name, s.interface) for s in got] == [
        (ns or "pods", name, names[i]) for i, (ns, name, _) in enumerate(entries)]


def test_json_form_with_every_field() -> None:
    annotation = json.dumps([
        {"name": "rail0", "namespace": "ml", "interface": "rdma0", "ips": ["10.1.0.5/24"], "mac": "02:00:00:00:00:01",
         "default-route": ["10.1.0.1"], "cni-args": {"x": 1}, "bandwidth": {"ingressRate": 1},
         "portMappings": [{"hostPort": 80, "containerPort": 8080}], "deviceID": "0000:1b:00.2"},
        {"name": "rail1"},
    ])
    first, second = parse_selections(annotation, "ml")
    assert first.key == "ml/rail0" and first.interface == "rdma0" and first.default_route == ["10.1.0.1"]
    assert first.cni_args == {"x": 1}
    assert first.runtime_config() == {"ips": ["10.1.0.5/24"], "mac": "02:00:00:00:00:01",
                                      "bandwidth": {"ingressRate": 1},
                                      "portMappings": [{"hostPort": 80, "containerPort": 8080}],
                                      "deviceID": "0000:1b:00.2"}
    assert second.key == "ml/rail1" and second.interface == "net2" and second.runtime_config() == {}


def test_empty_annotation_means_no_secondary_networks() -> None:
    assert parse_selections("", "pods") == [] and parse_selections("  ", "pods") == []


@pytest.mark.parametrize(("annotation", "words"), [
    ("[{\"name\": \"a\"", "not valid json"),
    ("{\"name\": \"a\"}", "invalid"),  # an object, not a list: read as the text form and refused
    ("[\"a\"]", "not an object"),
    ("a,,b", "empty entry"),
    ("a@", "no interface"),
    ("/a", "no namespace"),
    ("x/y/z", "more than one"),
    ("Rail0", "not a valid kubernetes name"),
    ("ns_1/rail0", "namespace"),
    ("rail0@net/1", "interface"),
    ("rail0@a-very-long-ifname", "interface"),
    ("rail0@eth0", "used twice"),
    ("a@net2, b", "used twice"),
    ('[{"name": "a", "ips": ["banana"]}]', "ips"),
    ('[{"name": "a", "mac": "zz"}]', "mac"),
    ('[{"name": "a", "default-route": ["x"]}]', "default-route"),
    ('[{"name": "a", "unknown": 1}]', "unknown"),
])
def test_bad_annotations_are_clear_errors(annotation: str, words: str) -> None:
    with pytest.raises(CniError) as exc:
        parse_selections(annotation, "pods")
    assert exc.value.code == errors.INVALID_CONFIG
    assert words in f"{exc.value.msg} {exc.value.details}".lower()


def test_namespace_isolation() -> None:
    assert parse_selections("rail0, kube-system/rail1", "ml", isolation=True, global_namespaces=("kube-system",))
    with pytest.raises(CniError) as exc:
        parse_selections("team-b/rail0", "ml", isolation=True)
    assert exc.value.code == errors.INVALID_CONFIG and "another namespace" in exc.value.msg
    assert parse_selections("team-b/rail0", "ml")  # isolation off: allowed


def test_nad_single_config_and_conflist(tmp_path: Path) -> None:
    single = {"config": json.dumps({"cniVersion": "1.0.0", "type": "railnet-macvlan", "master": "eth1"})}
    got = from_nad("ml", "rail0", single, tmp_path)
    assert got == {"cniVersion": "1.0.0", "name": "rail0", "plugins": [{"type": "railnet-macvlan", "master": "eth1"}]}
    chain = {"cniVersion": "1.0.0", "name": "rail1", "plugins": [{"type": "railnet-macvlan"}, {"type": "tuning"}]}
    assert from_nad("ml", "rail1", {"config": json.dumps(chain)}, tmp_path) == chain


def test_nad_without_config_names_a_file_in_the_conf_dir(tmp_path: Path) -> None:
    (tmp_path / "10-other.conf").write_text(json.dumps({"cniVersion": "1.0.0", "name": "other", "type": "bridge"}))
    (tmp_path / "20-rail.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "rail2", "plugins": [{"type": "railnet-macvlan"}]}))
    (tmp_path / "30-broken.conf").write_text("{")
    assert from_nad("ml", "rail2", {}, tmp_path)["plugins"] == [{"type": "railnet-macvlan"}]
    with pytest.raises(CniError) as exc:
        from_nad("ml", "nowhere", None, tmp_path)
    assert exc.value.code == errors.INVALID_CONFIG and "no config found" in exc.value.msg


@pytest.mark.parametrize("config", [
    "not json", "[1]", json.dumps({"cniVersion": "1.0.0", "type": "/bin/sh"}),
    json.dumps({"cniVersion": "1.0.0", "plugins": [{"type": "../../bin/sh"}]}),
    json.dumps({"cniVersion": "1.0.0", "plugins": []}), json.dumps({"type": "bridge"}),
])
def test_bad_nads_are_refused_before_anything_runs(tmp_path: Path, config: str) -> None:
    with pytest.raises(CniError) as exc:
        from_nad("ml", "bad", {"config": config}, tmp_path)
    assert exc.value.code == errors.INVALID_CONFIG


def test_network_status_entry() -> None:
    result = {"cniVersion": "1.1.0",
              "interfaces": [{"name": "eth0", "mac": "aa:aa:aa:aa:aa:aa", "sandbox": "/x"},
                             {"name": "net1", "mac": "02:00:00:00:00:01", "mtu": 9000, "sandbox": "/x"}],
              "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 0},
                      {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
                      {"address": "fd00::5/64", "interface": 1}],
              "dns": {}}
    entry = status_entry("ml/rail0", "net1", result, default=False,
                         device_info=pci_device_info("0000:1b:00.2", "mlx5_3", "0000:1b:00.0"))
    assert entry == {"name": "ml/rail0", "interface": "net1", "ips": ["10.1.0.5", "fd00::5"],
                     "mac": "02:00:00:00:00:01", "mtu": 9000, "default": False, "dns": {},
                     "gateway": ["10.1.0.1"],
                     "device-info": {"type": "pci", "version": "1.1.0",
                                     "pci": {"pci-address": "0000:1b:00.2", "rdma-device": "mlx5_3",
                                             "pf-pci-address": "0000:1b:00.0"}}}


def test_meta_conflist_wraps_the_primary_and_uninstall_restores(tmp_path: Path) -> None:
    from cni.install import main
    from cni.meta import netconf

    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf_dir.mkdir()
    calico = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [{"type": "calico"}]}
    (conf_dir / "10-calico.conflist").write_text(json.dumps(calico))
    (conf_dir / "05-broken.conf").write_text("{")
    assert main(["--dest", str(bin_dir), "--shim", "python", "--conf-dir", str(conf_dir)]) == 0
    ours = json.loads((conf_dir / netconf.META_FILE).read_text())
    assert ours["plugins"][0]["clusterNetwork"] == "k8s-pod-network" and ours["cniVersion"] == "1.0.0"
    assert sorted(p.name for p in conf_dir.iterdir())[0] == netconf.META_FILE  # the runtime picks ours first
    assert netconf.primary_network(conf_dir)[1] == calico  # re-running finds the primary, not ours
    assert main(["--dest", str(bin_dir), "--conf-dir", str(conf_dir), "--uninstall"]) == 0
    assert sorted(p.name for p in conf_dir.iterdir()) == ["05-broken.conf", "10-calico.conflist"]
    assert json.loads((conf_dir / "10-calico.conflist").read_text()) == calico and not list(bin_dir.iterdir())


def test_no_primary_is_a_clear_error(tmp_path: Path) -> None:
    from cni.install import main

    (tmp_path / "net.d").mkdir()
    assert main(["--dest", str(tmp_path / "bin"), "--shim", "python", "--conf-dir", str(tmp_path / "net.d")]) == 1
