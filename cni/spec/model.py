"""The one base model for every external schema (CNI configs, CRDs, annotations).

Naming rule: Python attributes are snake_case; the wire form (JSON on stdin, Kubernetes objects)
is camelCase, produced by the alias generator. Read with `model_validate`, write with
`model_dump(by_alias=True)`. Each subclass decides whether unknown keys are refused (`extra`).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

_MAC = re.compile(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}")


def is_mac(text: str) -> bool:
    return _MAC.fullmatch(text) is not None


def _check_mac(value: str) -> str:
    if not is_mac(value):
        raise ValueError(f"mac {value!r} is not a MAC address like 02:00:00:00:00:01")
    return value


MacAddress = Annotated[str, AfterValidator(_check_mac)]  # a config field holding a MAC address


class WireModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
