"""Generate the CustomResourceDefinitions railnet owns from the pydantic models the code uses.

    python -m railnet.dev.crdgen            # (re)write deploy/crds/*.yaml
    python -m railnet.dev.crdgen --check    # exit 1 if the checked-in YAML differs from the models

pydantic emits JSON Schema (2020-12); a CRD needs a *structural* OpenAPI v3 schema: no $ref, no
`title`, `nullable` instead of `anyOf [..., null]`, boolean `exclusiveMinimum`. `structural()` does
that translation and refuses anything it cannot translate faithfully, naming the field.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from cni.spec.nad import NetworkAttachmentDefinitionSpec

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "deploy" / "crds"

# The keywords of apiextensions.k8s.io/v1 JSONSchemaProps that a pydantic schema may legitimately map to.
_PASSTHROUGH = {
    "type",
    "format",
    "description",
    "default",
    "enum",
    "maximum",
    "minimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "multipleOf",
    "maxProperties",
    "minProperties",
    "required",
}
_DROPPED = {"title", "$defs", "examples"}


class CRDGenError(ValueError):
    """A model uses a schema construct that has no faithful structural-schema form."""


@dataclass(frozen=True)
class CRD:
    group: str
    version: str
    kind: str
    plural: str
    singular: str
    scope: str  # "Namespaced" | "Cluster"
    spec_model: type[BaseModel]
    description: str
    status_model: type[BaseModel] | None = None
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    columns: tuple[tuple[str, str, str], ...] = ()  # (name, type, jsonPath)
    source: str = ""  # the model's import path, for the header comment
    extra_labels: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.plural}.{self.group}"


def _crds() -> list[CRD]:
    # Imported here so that `--help` works even while a model module is being edited.
    from ipam import crd as ipam_crd
    from netmanager.topology.model import NodeTopology

    return [
        CRD(
            group=ipam_crd.GROUP,
            version=ipam_crd.VERSION,
            kind=ipam_crd.KIND,
            plural=ipam_crd.PLURAL,
            singular="ippool",
            scope="Cluster",
            spec_model=ipam_crd.IPPoolSpec,
            status_model=ipam_crd.IPPoolStatus,
            description="IPPool is a range of addresses railnet's IPAM hands out on one secondary network.",
            categories=("railnet",),
            columns=(
                ("Subnet", "string", ".spec.subnet"),
                ("Gateway", "string", ".spec.gateway"),
                ("Total", "integer", ".status.capacity"),
                ("Allocated", "integer", ".status.allocations"),
                ("Free", "integer", ".status.free"),
                ("Blocks", "integer", ".status.blocks"),
                ("Age", "date", ".metadata.creationTimestamp"),
            ),
            source="ipam.crd.IPPoolSpec / IPPoolStatus",
        ),
        CRD(
            group=ipam_crd.GROUP,
            version=ipam_crd.VERSION,
            kind=ipam_crd.BLOCK_KIND,
            plural=ipam_crd.BLOCK_PLURAL,
            singular="ippoolblock",
            scope="Cluster",
            spec_model=ipam_crd.IPPoolBlockSpec,
            status_model=ipam_crd.IPPoolBlockStatus,
            description=("IPPoolBlock is a block of an IPPool claimed by one node's agent (creating it is the "
                         "claim), or one fixed IP held for an IPReservation."),
            categories=("railnet",),
            short_names=("ipblock",),
            columns=(
                ("Pool", "string", ".spec.pool"),
                ("CIDR", "string", ".spec.cidr"),
                ("Node", "string", ".spec.node"),
                ("Allocated", "integer", ".status.allocated"),
                ("Capacity", "integer", ".status.capacity"),
                ("Age", "date", ".metadata.creationTimestamp"),
            ),
            source="ipam.crd.IPPoolBlockSpec / IPPoolBlockStatus",
        ),
        CRD(
            group=ipam_crd.GROUP,
            version=ipam_crd.VERSION,
            kind=ipam_crd.RESERVATION_KIND,
            plural=ipam_crd.RESERVATION_PLURAL,
            singular="ipreservation",
            scope="Namespaced",
            spec_model=ipam_crd.IPReservationSpec,
            description=("IPReservation is the fixed IP of one job replica or StatefulSet pod; it lives as long as "
                         "its owner (ownerReferences)."),
            categories=("railnet",),
            short_names=("ipres",),
            columns=(
                ("Pool", "string", ".spec.pool"),
                ("Address", "string", ".spec.address"),
                ("Owner", "string", ".spec.owner.name"),
                ("Replica", "string", ".spec.owner.replicaType"),
                ("Index", "integer", ".spec.owner.index"),
                ("Age", "date", ".metadata.creationTimestamp"),
            ),
            source="ipam.crd.IPReservationSpec",
        ),
        CRD(
            group="railnet.io",
            version="v1alpha1",
            kind="NodeTopology",
            plural="nodetopologies",
            singular="nodetopology",
            scope="Cluster",
            spec_model=NodeTopology,
            description=(
                "NodeTopology is a node's GPU / RDMA NIC / PCIe / NUMA layout, published by the railnet "
                "agent (object name = node name) and read by the scheduler."
            ),
            categories=("railnet",),
            columns=(
                ("Sockets", "integer", ".spec.sockets"),
                ("Age", "date", ".metadata.creationTimestamp"),
            ),
            source="netmanager.topology.model.NodeTopology",
        ),
        CRD(
            group="k8s.cni.cncf.io",
            version="v1",
            kind="NetworkAttachmentDefinition",
            plural="network-attachment-definitions",
            singular="network-attachment-definition",
            scope="Namespaced",
            spec_model=NetworkAttachmentDefinitionSpec,
            description=(
                "NetworkAttachmentDefinition is a CRD schema specified by the Network Plumbing Working Group "
                "to express the intent for attaching pods to one or more logical or physical networks. More "
                "information available at: https://github.com/k8snetworkplumbingwg/multi-net-spec"
            ),
            short_names=("net-attach-def",),
            source="cni.spec.nad.NetworkAttachmentDefinitionSpec (community schema)",
        ),
    ]


# ------------------------------------------------------------------------------ schema translation


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """Translate a pydantic JSON schema (with its $defs) into a structural OpenAPI v3 schema."""
    defs = schema.get("$defs", {})
    return _convert(schema, defs, path="", seen=())


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str, seen: tuple[str, ...]) -> dict[str, Any]:
    if "$ref" in node:
        ref = node["$ref"].removeprefix("#/$defs/")
        if ref in seen:
            raise CRDGenError(f"{path or '<root>'}: recursive model {ref} cannot be inlined into a CRD schema")
        target = {**defs[ref], **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(target, defs, path, (*seen, ref))

    node = dict(node)
    nullable = False
    for key in ("anyOf", "oneOf"):
        if key in node:
            variants = [v for v in node.pop(key) if v != {"type": "null"}]
            if len(variants) != 1:
                raise CRDGenError(f"{path}: unions other than Optional[X] have no structural form")
            nullable = True
            inner = _convert(variants[0], defs, path, seen)
            node = {**inner, **{k: v for k, v in node.items() if k not in inner or k == "description"}}
    if "allOf" in node:  # pydantic wraps a $ref with siblings in a one-element allOf
        parts = node.pop("allOf")
        if len(parts) != 1:
            raise CRDGenError(f"{path}: allOf with several schemas is not supported")
        node = {**_convert(parts[0], defs, path, seen), **node}

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs, f"{path}.{name}", seen) for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, f"{path}[]", seen)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = _convert(value, defs, f"{path}{{}}", seen)
            # `false` (extra="forbid") is what the API server's pruning does anyway; structural
            # schemas do not allow it next to `properties`.
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            if isinstance(value, bool):
                out[key] = value
            else:  # JSON Schema 2020-12 number -> OpenAPI v3.0 bound + boolean flag
                out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
                out[key] = True
        elif key == "nullable":  # an Optional already translated (an Optional list of models with Optionals)
            out[key] = value
        elif key == "default":
            if value is not None:
                out[key] = value
        elif key in _PASSTHROUGH or key.startswith("x-kubernetes-"):
            out[key] = value
        else:
            raise CRDGenError(f"{path or '<root>'}: JSON-schema keyword {key!r} has no CRD equivalent")

    if "type" not in out and "x-kubernetes-preserve-unknown-fields" not in out:
        raise CRDGenError(f"{path or '<root>'}: no type (structural schemas need one on every node)")
    if nullable:  # _mark_required_nullables() later keeps this only where it is needed
        out["nullable"] = True
    return _order(out)


def _mark_required_nullables(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop `nullable` from optional fields, keep it on required ones.

    Optional[X] = None means "may be omitted", and the API server prunes nulls of non-nullable fields
    before validation, so only a required-but-nullable field needs `nullable: true`.
    """
    props = schema.get("properties")
    if isinstance(props, dict):
        required = set(schema.get("required", []))
        for name, sub in props.items():
            if name not in required:
                sub.pop("nullable", None)
            _mark_required_nullables(sub)
    if isinstance(schema.get("items"), dict):
        _mark_required_nullables(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        _mark_required_nullables(schema["additionalProperties"])
    return schema


_ORDER = ["description", "type", "format", "nullable", "enum", "default"]


def _order(d: dict[str, Any]) -> dict[str, Any]:
    # A stable, readable key order: what it is first, then its children, then constraints.
    first = [k for k in _ORDER if k in d]
    middle = [k for k in ("properties", "additionalProperties", "items", "required") if k in d]
    rest = sorted(k for k in d if k not in first and k not in middle)
    return {k: d[k] for k in first + middle + rest}


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    return _mark_required_nullables(structural(model.model_json_schema(by_alias=True, mode="validation")))


# ------------------------------------------------------------------------------------------ CRDs


def crd_manifest(crd: CRD) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string", "description": "APIVersion of this representation of the object."},
        "kind": {"type": "string", "description": "Kind of the REST resource this object represents."},
        "metadata": {"type": "object"},
        "spec": model_schema(crd.spec_model),
    }
    if crd.status_model is not None:
        properties["status"] = model_schema(crd.status_model)
    root: dict[str, Any] = {"description": crd.description, "type": "object", "properties": properties}
    if crd.status_model is not None or crd.group == "railnet.io":
        root["required"] = ["spec"]

    version: dict[str, Any] = {
        "name": crd.version,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": root},
    }
    if crd.status_model is not None:
        version["subresources"] = {"status": {}}
    if crd.columns:
        version["additionalPrinterColumns"] = [
            {"name": n, "type": t, "jsonPath": p} for n, t, p in crd.columns
        ]

    names: dict[str, Any] = {"plural": crd.plural, "singular": crd.singular, "kind": crd.kind,
                             "listKind": f"{crd.kind}List"}
    if crd.short_names:
        names["shortNames"] = list(crd.short_names)
    if crd.categories:
        names["categories"] = list(crd.categories)

    labels = {"app.kubernetes.io/part-of": "railnet", **crd.extra_labels}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd.name, "labels": labels},
        "spec": {"group": crd.group, "scope": crd.scope, "names": names, "versions": [version]},
    }


def render(crd: CRD) -> str:
    header = f"# Generated by `python -m railnet.dev.crdgen` from {crd.source}. Do not edit.\n"
    body = yaml.safe_dump(crd_manifest(crd), sort_keys=False, default_flow_style=False, width=110)
    return header + body


def generated() -> dict[Path, str]:
    """The CRD files as they should be on disk: {path: text}."""
    return {CRD_DIR / f"{crd.name}.yaml": render(crd) for crd in _crds()}


def _stale(files: dict[Path, str]) -> list[Path]:
    extra = {p for p in CRD_DIR.glob("*.yaml") if p not in files}
    return sorted(extra | {p for p, text in files.items() if not p.exists() or p.read_text() != text})


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m railnet.dev.crdgen", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if deploy/crds differs from the models")
    args = parser.parse_args(argv)
    try:
        files = generated()
    except CRDGenError as exc:
        out(f"railnet.dev.crdgen: error: {exc}")
        return 1
    if args.check:
        stale = _stale(files)
        for path in stale:
            old = path.read_text().splitlines(keepends=True) if path.exists() else []
            new = files.get(path, "").splitlines(keepends=True)
            out("".join(difflib.unified_diff(old, new, str(path), f"{path} (generated)")))
        if stale:
            out("railnet.dev.crdgen: deploy/crds is out of date; run `python -m railnet.dev.crdgen`")
        return 1 if stale else 0
    CRD_DIR.mkdir(parents=True, exist_ok=True)
    for path in _stale(files):
        if path in files:
            path.write_text(files[path])
            out(f"wrote {path.relative_to(REPO)}")
        else:
            path.unlink()
            out(f"removed {path.relative_to(REPO)} (no model generates it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
