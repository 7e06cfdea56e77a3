"""Named pools: files hold an IPPool (or its spec), validated by the CRD's model and converted in one place."""

from __future__ import annotations

import ipaddress
import json
import shutil
from pathlib import Path

import pytest
import yaml

from cni.spec.errors import INVALID_CONFIG, UNSUPPORTED_FIELD, CniError
from ipam import config as ipam_config
from ipam import crd
from ipam.pools import PoolRegistry
from ipam.sqlite import Database
from ipam.store import IpamStore

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "ippool-rail0.yaml"


def test_example_ippool_loads_and_allocates(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "rail0.yaml")
    spec = PoolRegistry(tmp_path).get("rail0")
    store = IpamStore(Database(tmp_path / "db"))
    first = store.allocate("rail0", spec, "c1", "net1", network="rail0-net")
    assert [str(a.address) for a in first] == ["192.168.100.10"] and str(first[0].range.gateway_ip) == "192.168.100.1"
    got = {str(store.allocate("rail0", spec, f"c{i}", "net1", network="rail0-net")[0].address) for i in range(2, 75)}
    assert not got & {f"192.168.100.{i}" for i in [*range(20, 30), *range(64, 80)]}  # exclusions honoured
    assert [r.dst for r in spec.routes] == ["192.168.0.0/16"]


def test_bare_spec_json_and_cache(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"subnet": "fd00:7::/120", "ranges": [
        {"start": "fd00:7::10", "end": "fd00:7::1f"}, {"start": "fd00:7::80", "end": "fd00:7::8f"}]}))
    registry = PoolRegistry(tmp_path)
    spec = registry.get("p")
    assert registry.get("p") is spec
    assert [(str(r.first), str(r.last)) for r in spec.ranges[0]] == [("fd00:7::10", "fd00:7::1f"),
                                                                     ("fd00:7::80", "fd00:7::8f")]


@pytest.mark.parametrize(("body", "code", "words"), [
    ({"ranges": [[{"subnet": "10.95.0.0/29"}]]}, INVALID_CONFIG, "host-local range sets"),
    ({"subnet": "10.95.0.0/24", "rangeStrat": "10.95.0.9"}, UNSUPPORTED_FIELD, "unsupported field"),
    ({"subnet": "10.95.0.0/24", "gateway": "10.96.0.1"}, INVALID_CONFIG, "invalid"),
    ({"subnet": "fd00::/127"}, INVALID_CONFIG, "invalid"),
    ({"subnet": "10.95.0.0/24", "ranges": [{"start": "10.95.0.10", "end": "10.95.0.20"},
                                           {"start": "10.95.0.15", "end": "10.95.0.30"}]}, INVALID_CONFIG, "invalid"),
    ({"apiVersion": "railnet.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "other"},
      "spec": {"subnet": "10.95.0.0/24"}}, INVALID_CONFIG, "defines IPPool 'other'"),
    ({"apiVersion": "v1", "kind": "ConfigMap", "spec": {"subnet": "10.95.0.0/24"}}, INVALID_CONFIG, "ConfigMap"),
])
def test_bad_pool_files(tmp_path: Path, body: dict[str, object], code: int, words: str) -> None:
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(body))
    with pytest.raises(CniError) as exc:
        PoolRegistry(tmp_path).get("p")
    assert exc.value.code == code and words in exc.value.msg, exc.value.msg


def test_unknown_pool_says_what_to_write(tmp_path: Path) -> None:
    with pytest.raises(CniError) as exc:
        PoolRegistry(tmp_path).get("nope")
    assert exc.value.code == INVALID_CONFIG and "IPPool" in exc.value.details


def test_pool_and_inline_config_share_one_exclusion_parser_and_route_model() -> None:
    assert vars(crd)["parse_exclusion"] is ipam_config.parse_exclusion
    assert crd.IPPoolSpec.model_fields["routes"].annotation == list[ipam_config.Route]
    assert ipam_config.parse_exclusion("10.0.0.5-10.0.0.9") == (ipaddress.ip_address("10.0.0.5"),
                                                               ipaddress.ip_address("10.0.0.9"))


def test_one_naming_rule_snake_case_attributes_camel_case_wire() -> None:
    conf = ipam_config.parse_ipam({"type": "railnet-ipam", "subnet": "10.7.0.0/24", "rangeStart": "10.7.0.9"})
    assert conf.range_start == "10.7.0.9"
    rng = ipam_config.Range(subnet="10.7.0.0/24", range_end="10.7.0.99")
    assert rng.model_dump(by_alias=True, exclude_none=True) == {"subnet": "10.7.0.0/24", "rangeEnd": "10.7.0.99"}
    spec = crd.IPPoolSpec.model_validate({"subnet": "10.7.0.0/24", "nodeSelector": {"a": "b"}})
    assert spec.node_selector == {"a": "b"} and "nodeSelector" in spec.model_dump(by_alias=True)
    from cni.spec.model import WireModel
    from netmanager.topology import model as topo

    for model in (ipam_config.Range, ipam_config.IpamConf, ipam_config.PoolSpec, ipam_config.Route,
                  crd.IPPool, crd.IPPoolSpec, crd.IPRange, crd.IPPoolStatus, topo.NodeTopology):
        assert issubclass(model, WireModel), model


def test_ippool_converts_to_one_range_set() -> None:
    spec = crd.IPPoolSpec.model_validate({"subnet": "10.8.0.0/24", "gateway": "10.8.0.254",
                                          "exclude": ["10.8.0.7"], "routes": [{"dst": "10.0.0.0/8"}]})
    pool = spec.to_pool_spec()
    (rng,) = pool.ranges[0]
    assert (str(rng.first), str(rng.last), str(rng.gateway_ip)) == ("10.8.0.1", "10.8.0.254", "10.8.0.254")
    assert pool.exclude == ["10.8.0.7"] and pool.routes[0].dst == "10.0.0.0/8"
