"""The one base model for every external schema (CNI configs, CRDs, annotations).

Naming rule: Python attributes are snake_case; the wire form (JSON on stdin, Kubernetes objects)
is camelCase, produced by the alias generator. Read with `model_validate`, write with
`model_dump(by_alias=True)`. Each subclass decides whether unknown keys are refused (`extra`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
