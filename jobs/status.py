"""Job status: conditions (Created, Running, Restarting, Succeeded, Failed, Suspended) and counts.

Conditions are the anchors' JobCondition (type, status, reason, message, lastUpdateTime,
lastTransitionTime); reasons are ``<Kind><State>`` for kubeflow.org jobs (``TFJobRunning``) and
``Job<State>`` for KubeDL's (``JobRunning``), as each operator writes them. Setting one condition
turns off the ones it excludes, as Kubeflow's ``filterOutCondition`` does: Running and Restarting
exclude each other, a terminal condition turns both off.
"""

from __future__ import annotations

import datetime
from typing import Any

from jobs.api import KUBEDL, Job

JSON = dict[str, Any]
TERMINAL = ("Succeeded", "Failed")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def reason(job: Job | None, state: str, kind: str = "", group: str = "") -> str:
    if job is not None:
        kind, group = job.kind, job.group
    return f"Job{state}" if group == KUBEDL else f"{kind}{state}"


def condition(status: JSON, ctype: str) -> JSON | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == ctype), None)


def is_true(status: JSON, ctype: str) -> bool:
    c = condition(status, ctype)
    return c is not None and c.get("status") == "True"


def terminal(status: JSON) -> str | None:
    return next((t for t in TERMINAL if is_true(status, t)), None)


def set_condition(status: JSON, ctype: str, value: bool, why: str, message: str) -> None:
    stamp = now()
    text = "True" if value else "False"
    conds: list[JSON] = list(status.get("conditions") or [])
    excludes = {"Running": ("Restarting",), "Restarting": ("Running",), "Succeeded": ("Running", "Restarting"),
                "Failed": ("Running", "Restarting")}.get(ctype, ()) if value else ()
    for c in conds:
        if c.get("type") in excludes and c.get("status") == "True":
            c.update(status="False", lastUpdateTime=stamp, lastTransitionTime=stamp)
    old = next((c for c in conds if c.get("type") == ctype), None)
    if old is None:
        if not value:
            status["conditions"] = conds
            return
        conds.append({"type": ctype, "status": text, "reason": why, "message": message,
                      "lastUpdateTime": stamp, "lastTransitionTime": stamp})
    elif (old.get("status"), old.get("reason"), old.get("message")) != (text, why, message):
        if old.get("status") != text:
            old["lastTransitionTime"] = stamp
        old.update(status=text, reason=why, message=message, lastUpdateTime=stamp)
    status["conditions"] = conds


def drop_condition(status: JSON, ctype: str, why: str) -> bool:
    """Remove condition ``ctype`` if its reason is ``why`` (e.g. an InvalidSpec that was fixed)."""
    conds = status.get("conditions") or []
    keep = [c for c in conds if not (c.get("type") == ctype and c.get("reason") == why)]
    if len(keep) == len(conds):
        return False
    status["conditions"] = keep
    return True
