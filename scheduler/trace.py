"""Reading the openb trace CSVs (Alibaba cluster-trace-gpu-v2023) into model objects.

Node list columns: ``sn,cpu_milli,memory_mib,gpu,model``. Pod list columns:
``name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]``; ``gpu_milli`` is per GPU and
``gpu_spec`` (optional) restricts the GPU model, e.g. ``V100M16|V100M32``. Bad rows raise
``TraceError`` naming the file, line and column.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from scheduler.model import MILLI, ModelError, PodSpec


class TraceError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class NodeRow:
    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str


def _int(row: dict[str, str], column: str, where: str) -> int:
    raw = row.get(column)
    if raw is None or raw.strip() == "":
        raise TraceError(f"{where}: column {column} is missing")
    try:
        value = int(float(raw))
    except ValueError:
        raise TraceError(f"{where}: column {column} is not a number: {raw!r}") from None
    if value < 0:
        raise TraceError(f"{where}: column {column} is negative: {value}")
    return value


def _rows(path: Path, required: tuple[str, ...]) -> list[tuple[str, dict[str, str]]]:
    try:
        handle = path.open(newline="")
    except OSError as err:
        raise TraceError(f"{path}: cannot open: {err.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(f"{path}: missing columns {', '.join(missing)} (have {reader.fieldnames})")
        return [(f"{path}:{line}", row) for line, row in enumerate(reader, start=2)]


def load_nodes(path: Path) -> list[NodeRow]:
    out = []
    for where, row in _rows(path, ("sn", "cpu_milli", "memory_mib", "gpu", "model")):
        out.append(
            NodeRow(
                name=row["sn"],
                cpu_milli=_int(row, "cpu_milli", where),
                memory_mib=_int(row, "memory_mib", where),
                gpus=_int(row, "gpu", where),
                model=(row.get("model") or "").strip(),
            )
        )
    if not out:
        raise TraceError(f"{path}: no nodes")
    return out


def load_pods(path: Path) -> list[PodSpec]:
    out = []
    for where, row in _rows(path, ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")):
        num_gpu = _int(row, "num_gpu", where)
        gpu_milli = min(_int(row, "gpu_milli", where), MILLI) if num_gpu else 0
        spec = (row.get("gpu_spec") or "").strip()
        models = frozenset(m for m in spec.split("|") if m)
        try:
            out.append(
                PodSpec(
                    name=row["name"],
                    cpu_milli=_int(row, "cpu_milli", where),
                    memory_mib=_int(row, "memory_mib", where),
                    num_gpu=num_gpu,
                    gpu_milli=gpu_milli,
                    gpu_models=models,
                )
            )
        except ModelError as err:
            raise TraceError(f"{where}: {err}") from None
    if not out:
        raise TraceError(f"{path}: no pods")
    return out
