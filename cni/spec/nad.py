"""The community NetworkAttachmentDefinition (k8s.cni.cncf.io/v1, the Network Plumbing Working
Group's multi-net spec), spec only: the API type the coming meta plugin reads. Its CRD in deploy/
is generated from this model (railnet.dev.crdgen)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class NetworkAttachmentDefinitionSpec(BaseModel):
    """The community NetworkAttachmentDefinition (k8snetworkplumbingwg/multi-net-spec), spec only."""

    config: str | None = Field(
        default=None, description="NetworkAttachmentDefinition config is a JSON-formatted CNI configuration"
    )
