"""deploy/crds/*.yaml must be exactly what the pydantic models generate, and be structural schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field

from ipam.crd import IPPool, IPPoolSpec
from railnet.dev import crdgen


def test_checked_in_crds_equal_generated() -> None:
    files = crdgen.generated()
    on_disk = sorted(crdgen.CRD_DIR.glob("*.yaml"))
    assert sorted(files) == on_disk, "run `python -m railnet.dev.crdgen`"
    for path, text in files.items():
        assert path.read_text() == text, f"{path.name} is stale: run `python -m railnet.dev.crdgen`"


def test_check_mode_catches_stale_and_extra_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The clean-tree case is test_checked_in_crds_equal_generated; this one proves --check can fail.
    files = crdgen.generated()
    monkeypatch.setattr(crdgen, "CRD_DIR", tmp_path)
    for path, text in files.items():
        (tmp_path / path.name).write_text(text)
    out: list[str] = []
    assert crdgen.main(["--check"], out=out.append) == 0, "\n".join(out)
    first = tmp_path / sorted(files)[0].name
    first.write_text(first.read_text() + "# edited by hand\n")
    assert crdgen.main(["--check"], out=out.append) == 1
    assert "-# edited by hand" in "".join(out)
    first.write_text(files[sorted(files)[0]])
    (tmp_path / "orphan.yaml").write_text("kind: Nothing\n")
    assert crdgen.main(["--check"], out=out.append) == 1


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, schema)]
    for name, sub in schema.get("properties", {}).items():
        nodes += _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        nodes += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        nodes += _walk(schema["additionalProperties"], f"{path}{{}}")
    return nodes


@pytest.mark.parametrize("crd", crdgen._crds(), ids=lambda c: c.name)
def test_schemas_are_structural(crd: crdgen.CRD) -> None:
    doc = yaml.safe_load(crdgen.render(crd))
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "type" in node, f"{path}: no type"
        assert not {"$ref", "anyOf", "oneOf", "allOf", "title", "$defs"} & set(node), path
        assert not ("properties" in node and "additionalProperties" in node), path


def test_ippool_schema_follows_model() -> None:
    doc = yaml.safe_load(crdgen.render(crdgen._crds()[0]))
    assert doc["metadata"]["name"] == "ippools.railnet.io"
    version = doc["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(spec["properties"]) == {f.alias for f in IPPoolSpec.model_fields.values()}
    assert spec["required"] == ["subnet"]
    assert spec["properties"]["subnet"]["format"] == "cidr"
    assert version["subresources"] == {"status": {}}
    assert doc["spec"]["scope"] == "Cluster"


def test_nodetopology_spec_is_the_agent_model() -> None:
    from netmanager.topology.model import NodeTopology

    crd = next(c for c in crdgen._crds() if c.kind == "NodeTopology")
    assert crd.spec_model is NodeTopology
    spec = crdgen.crd_manifest(crd)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(spec["properties"]) == {f.alias or n for n, f in NodeTopology.model_fields.items()}


def test_optional_fields_are_omittable_not_nullable() -> None:
    class M(BaseModel):
        required_nullable: str | None
        optional: int | None = None
        nested: list[str | None] = Field(default_factory=list)

    schema = crdgen.model_schema(M)
    assert schema["properties"]["required_nullable"] == {"type": "string", "nullable": True}
    assert schema["properties"]["optional"] == {"type": "integer"}
    assert schema["properties"]["nested"]["items"] == {"type": "string", "nullable": True}
    assert schema["required"] == ["required_nullable"]


def test_untranslatable_unions_are_refused() -> None:
    class M(BaseModel):
        either: int | str

    with pytest.raises(crdgen.CRDGenError, match="either"):
        crdgen.model_schema(M)


def test_ippool_model_validates() -> None:
    pool = IPPool.model_validate(
        {
            "apiVersion": "railnet.io/v1alpha1",
            "kind": "IPPool",
            "metadata": {"name": "roce-a"},
            "spec": {
                "subnet": "192.168.100.0/24",
                "ranges": [{"start": "192.168.100.10", "end": "192.168.100.200"}],
                "exclude": ["192.168.100.50", "192.168.100.64/28"],
                "gateway": "192.168.100.1",
                "routes": [{"dst": "10.200.0.0/16"}],
                "nodeSelector": {"railnet.io/rail": "0"},
            },
        }
    )
    assert pool.spec.node_selector == {"railnet.io/rail": "0"}
    for bad in (
        {"subnet": "192.168.100.1/24"},  # host bits set
        {"subnet": "192.168.100.0/24", "gateway": "10.0.0.1"},
        {"subnet": "192.168.100.0/24", "ranges": [{"start": "192.168.100.9", "end": "192.168.100.2"}]},
        {"subnet": "192.168.100.0/24", "exclude": ["192.168.0.0/16"]},
    ):
        with pytest.raises(ValueError):
            IPPoolSpec.model_validate(bad)


def test_examples_validate_against_the_models() -> None:
    import json

    from netmanager.topology.model import NodeTopology

    examples = sorted((crdgen.REPO / "deploy" / "examples").glob("*.yaml"))
    assert examples
    kinds = set()
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            kinds.add(doc["kind"])
            if doc["kind"] == "IPPool":
                IPPool.model_validate(doc)
            elif doc["kind"] == "NodeTopology":
                NodeTopology.model_validate(doc["spec"])
            elif doc["kind"] == "NetworkAttachmentDefinition":
                assert json.loads(doc["spec"]["config"])["name"] == doc["metadata"]["name"]
    assert kinds == {"IPPool", "NodeTopology", "NetworkAttachmentDefinition"}


def test_ippool_exclude_accepts_spans() -> None:
    spec = IPPoolSpec.model_validate({"subnet": "10.1.0.0/24", "exclude": ["10.1.0.20-10.1.0.29", "10.1.0.64/28"]})
    assert spec.exclude[0] == "10.1.0.20-10.1.0.29"
    with pytest.raises(ValueError, match="start must not be above end"):
        IPPoolSpec.model_validate({"subnet": "10.1.0.0/24", "exclude": ["10.1.0.29-10.1.0.20"]})
    with pytest.raises(ValueError, match="not inside subnet"):
        IPPoolSpec.model_validate({"subnet": "10.1.0.0/24", "exclude": ["10.1.0.250-10.1.1.5"]})
