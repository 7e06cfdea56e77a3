"""One CNI invocation: the CNI_* environment plus the network config on stdin, validated.

Validation happens before any side effect so that bad input never leaves state behind.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from cni.spec.errors import DECODE_FAILURE, INVALID_CONFIG, INVALID_ENVIRONMENT, UNKNOWN_CONTAINER, CniError
from cni.spec.hostroot import host_path
from cni.spec.versions import LATEST, SUPPORTED, require_supported

COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
# Same rule as libcni's ValidateContainerID.
_CONTAINER_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
IFNAMSIZ = 16  # kernel limit including the trailing NUL
# The kernel's isspace() works per byte on its own ctype table (lib/ctype.c): \t \n \v \f \r, space
# and 0xA0. Python's str.isspace() differs (it accepts U+001C..U+001F, refuses 0xA0 as a byte).
_KERNEL_SPACE = frozenset(b"\t\n\v\f\r \xa0")


def validate_ifname(name: str) -> None:
    """The kernel's dev_valid_name rules, stated as what to fix."""
    problem = ""
    if not name:
        problem = "is empty"
    elif len(name.encode()) >= IFNAMSIZ:
        problem = f"is {len(name.encode())} bytes long; the kernel allows at most {IFNAMSIZ - 1}"
    elif name in (".", ".."):
        problem = "may not be '.' or '..'"
    elif "/" in name or ":" in name or "\0" in name or any(b in _KERNEL_SPACE for b in name.encode()):
        problem = "may not contain '/', ':' or whitespace"
    if problem:
        raise CniError(INVALID_ENVIRONMENT, f"invalid interface name {name!r}", f"CNI_IFNAME {problem}")


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS is 'K=V;K2=V2'."""
    out: dict[str, str] = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"invalid CNI_ARGS entry {pair!r}", "use K=V pairs separated by ';'")
        out[key] = value
    return out


@dataclass
class CniRequest:
    command: str
    container_id: str
    netns: str
    ifname: str
    args: dict[str, str]
    path: list[str]
    env: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def cni_version(self) -> str:
        version = self.config.get("cniVersion")
        return version if isinstance(version, str) and version in SUPPORTED else LATEST

    @property
    def network_name(self) -> str:
        return str(self.config.get("name", ""))

    @property
    def plugin_type(self) -> str:
        return str(self.config.get("type", ""))

    @classmethod
    def parse(cls, env: dict[str, str], stdin: str) -> CniRequest:
        command = env.get("CNI_COMMAND", "")
        if command not in COMMANDS:
            raise CniError(INVALID_ENVIRONMENT, f"invalid CNI_COMMAND {command!r}",
                           f"set CNI_COMMAND to one of {', '.join(COMMANDS)}")
        req = cls(
            command=command,
            container_id=env.get("CNI_CONTAINERID", ""),
            netns=env.get("CNI_NETNS", ""),
            ifname=env.get("CNI_IFNAME", ""),
            args=parse_cni_args(env.get("CNI_ARGS", "")),
            path=[p for p in env.get("CNI_PATH", "").split(":") if p],
            env=dict(env),
        )
        if command == "VERSION" and not stdin.strip():
            return req
        req.config = decode_config(stdin)
        require_supported(req.config.get("cniVersion"))
        if command == "VERSION":
            return req
        for key in ("name", "type"):
            if not isinstance(req.config.get(key), str) or not req.config[key]:
                raise CniError(INVALID_CONFIG, f"network config has no {key!r}", f"add a string field {key!r}")
        if command in ("ADD", "DEL", "CHECK"):
            req._validate_attachment_env()
        return req

    def _validate_attachment_env(self) -> None:
        if not self.container_id:
            raise CniError(INVALID_ENVIRONMENT, "CNI_CONTAINERID is not set", f"{self.command} needs a container ID")
        if not _CONTAINER_ID.fullmatch(self.container_id):
            raise CniError(INVALID_ENVIRONMENT, f"invalid CNI_CONTAINERID {self.container_id!r}",
                           "use letters, digits, '_', '.' and '-', starting with a letter or digit")
        validate_ifname(self.ifname)
        if self.command == "DEL":
            return  # DEL must succeed even when the netns is already gone
        if not self.netns:
            raise CniError(INVALID_ENVIRONMENT, "CNI_NETNS is not set", f"{self.command} needs the container's netns path")
        if not os.path.exists(host_path(self.netns)):
            raise CniError(UNKNOWN_CONTAINER, f"network namespace {self.netns} does not exist",
                           "the container's netns must exist for " + self.command)


def decode_config(stdin: str) -> dict[str, Any]:
    if not stdin.strip():
        raise CniError(DECODE_FAILURE, "no network config on stdin", "pass the network config JSON on stdin")
    try:
        config = json.loads(stdin)
    except json.JSONDecodeError as exc:
        raise CniError(DECODE_FAILURE, "network config is not valid JSON",
                       f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "network config must be a JSON object", f"got {type(config).__name__}")
    return config
