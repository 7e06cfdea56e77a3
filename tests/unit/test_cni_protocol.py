"""CNI request validation and result conversion (pure logic)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni.spec import errors
from cni.spec.errors import CniError
from cni.spec.request import CniRequest, parse_cni_args, validate_ifname
from cni.spec.versions import SUPPORTED, canonical_result, convert_result

RESULT = {
    "cniVersion": "1.1.0",
    "interfaces": [{"name": "net1", "mac": "02:00:00:00:00:01", "mtu": 9000, "sandbox": "/x", "pciID": "0000:3b:00.0"}],
    "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 0},
            {"address": "fd00::2/64", "interface": 0}],
    "routes": [{"dst": "10.9.0.0/16"}, {"dst": "10.0.0.0/24", "table": 1002, "scope": 253}],
    "dns": {},
}


@given(st.text(min_size=1, max_size=30))
def test_ifname_rule_matches_the_kernel(name: str) -> None:
    bad = (len(name.encode()) > 15 or name in (".", "..") or any(c in "/:" or c.isspace() for c in name))
    if bad:
        with pytest.raises(CniError) as exc:
            validate_ifname(name)
        assert exc.value.code == errors.INVALID_ENVIRONMENT
    else:
        validate_ifname(name)


@pytest.mark.parametrize("version", SUPPORTED)
def test_conversion_per_version(version: str) -> None:
    out = convert_result(RESULT, version)
    assert out["cniVersion"] == version
    if version == "1.1.0":
        assert out["routes"] == RESULT["routes"] and out["interfaces"][0]["pciID"] == "0000:3b:00.0"
    else:
        assert out["routes"] == [{"dst": "10.9.0.0/16"}]  # a policy-table route has no pre-1.1 form
        assert "mtu" not in out["interfaces"][0] and "pciID" not in out["interfaces"][0]
    legacy = version in ("0.3.0", "0.3.1", "0.4.0")
    assert [ip.get("version") for ip in out["ips"]] == (["4", "6"] if legacy else [None, None])
    assert canonical_result(out)["ips"][0] == RESULT["ips"][0]


def test_cni_args_parsing() -> None:
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=a=b") == {"IgnoreUnknown": "1", "K8S_POD_NAME": "a=b"}
    with pytest.raises(CniError):
        parse_cni_args("novalue")


def test_version_needs_no_netns_and_gc_needs_no_container() -> None:
    assert CniRequest.parse({"CNI_COMMAND": "VERSION"}, "").command == "VERSION"
    req = CniRequest.parse({"CNI_COMMAND": "GC"}, '{"cniVersion": "1.1.0", "name": "n", "type": "t"}')
    assert req.network_name == "n" and req.cni_version == "1.1.0"


@pytest.mark.parametrize(("stdin", "code"), [
    ("", errors.DECODE_FAILURE), ("{", errors.DECODE_FAILURE), ('"x"', errors.DECODE_FAILURE),
    ('{"cniVersion": "0.2.0", "name": "n", "type": "t"}', errors.INCOMPATIBLE_VERSION),
    ('{"cniVersion": "1.0.0", "type": "t"}', errors.INVALID_CONFIG),
])
def test_bad_config(stdin: str, code: int) -> None:
    with pytest.raises(CniError) as exc:
        CniRequest.parse({"CNI_COMMAND": "STATUS"}, stdin)
    assert exc.value.code == code


def test_state_database_failure_is_an_io_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import sqlite3

    from cni.attachments import AttachmentStore
    from cni.dispatch import Dispatcher
    from ipam.plugin import IpamService
    from ipam.pools import PoolRegistry
    from ipam.sqlite import Database
    from ipam.store import IpamStore

    db = Database(tmp_path / "db")
    dispatcher = Dispatcher(IpamService(IpamStore(db), PoolRegistry(None)), AttachmentStore(db), tmp_path)

    class Broken:
        def gc(self, req: CniRequest) -> None:
            raise sqlite3.OperationalError("disk I/O error")

    dispatcher.plugins["railnet-ipam"] = Broken()  # type: ignore[assignment]
    code, out = dispatcher.handle("railnet-ipam", {"CNI_COMMAND": "GC"}, '{"cniVersion": "1.1.0", "name": "n", "type": "x"}')
    assert code == 1 and json.loads(out)["code"] == errors.IO_FAILURE and "disk I/O error" in json.loads(out)["msg"]
