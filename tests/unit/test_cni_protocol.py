"""CNI request validation and result conversion (pure logic)."""

from __future__ import annotations

import pytest

from cni.spec import errors
from cni.spec.errors import CniError
from cni.spec.request import CniRequest, parse_cni_args, validate_ifname
from cni.spec.versions import SUPPORTED, canonical_result, convert_result, has_ip_version_field, version_key

RESULT = {
    "cniVersion": "1.1.0",
    "interfaces": [{"name": "net1", "mac": "02:00:00:00:00:01", "mtu": 9000, "sandbox": "/x", "pciID": "0000:3b:00.0"}],
    "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 0},
            {"address": "fd00::2/64", "interface": 0}],
    "routes": [{"dst": "10.9.0.0/16"}, {"dst": "10.0.0.0/24", "table": 1002, "scope": 253}],
    "dns": {},
}


# Written from the kernel's dev_valid_name() and lib/ctype.c, not from railnet's code: names are
# bytes; at most 15 of them; not "." or ".."; no '/', ':' or a byte the kernel's isspace() accepts
# (9-13, 32 and 0xA0). Names the kernel itself refuses or accepts are in tests/netns/test_kernel_rules.py.
IFNAMES = [
    ("net1", True), ("net1.100", True), ("rdma_0-a", True), ("a" * 15, True), ("a" * 16, False),
    ("é" * 7, True), ("é" * 8, False),  # 2 bytes each: 14 and 16 bytes
    ("\x1f", True), ("\x1c", True),  # Python calls these whitespace; the kernel does not
    ("\u00a0", False),  # encodes as c2 a0: a 0xA0 byte, which the kernel calls a space
    ("\u2003", True),  # an em space is e2 80 83: no byte the kernel calls a space
    ("net\t1", False), ("net\x0b", False), ("net 1", False), ("net/1", False), ("net:1", False),
    (".", False), ("..", False), ("...", True), ("", False),
]


@pytest.mark.parametrize(("name", "valid"), IFNAMES)
def test_ifname_rule_is_the_kernels(name: str, valid: bool) -> None:
    if valid:
        validate_ifname(name)
    else:
        with pytest.raises(CniError) as exc:
            validate_ifname(name)
        assert exc.value.code == errors.INVALID_ENVIRONMENT


@pytest.mark.parametrize("version", SUPPORTED)
def test_conversion_per_version(version: str) -> None:
    out = convert_result(RESULT, version)
    assert out["cniVersion"] == version
    if version == "1.1.0":
        assert out["routes"] == RESULT["routes"] and out["interfaces"][0]["pciID"] == "0000:3b:00.0"
    else:
        assert out["routes"] == [{"dst": "10.9.0.0/16"}]  # a policy-table route has no pre-1.1 form
        assert "mtu" not in out["interfaces"][0] and "pciID" not in out["interfaces"][0]
    legacy = version in ("0.3.0", "0.3.1", "0.4.0")  # written out: the predicate is what is under test
    assert has_ip_version_field(version) == legacy
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

    dispatcher.tables["railnet-ipam"]["GC"] = Broken().gc
    code, out = dispatcher.handle("railnet-ipam", {"CNI_COMMAND": "GC"}, '{"cniVersion": "1.1.0", "name": "n", "type": "x"}')
    assert code == 1 and json.loads(out)["code"] == errors.IO_FAILURE and "disk I/O error" in json.loads(out)["msg"]


def test_versions_compare_as_numbers() -> None:
    assert version_key("0.10.0") > version_key("0.4.0")  # as strings it would sort first
    assert max(["0.4.0", "1.0.0", "0.10.0"], key=version_key) == "1.0.0"


@pytest.mark.parametrize("cid", ["abc\n", "abc\nrm -rf", "../x", "-x"])
def test_container_id_rule_has_no_trailing_newline_loophole(cid: str) -> None:
    with pytest.raises(CniError) as exc:
        CniRequest.parse({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": cid, "CNI_IFNAME": "net1"},
                         '{"cniVersion": "1.1.0", "name": "n", "type": "t"}')
    assert exc.value.code == errors.INVALID_ENVIRONMENT
