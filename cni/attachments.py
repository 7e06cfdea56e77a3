"""Attachment records: the agent's own result cache, keyed by (container id, ifname).

A record is written as 'adding' before any kernel change and becomes 'added' with the result
once ADD succeeds, so DEL, CHECK and GC after a crash or a config change know what was made
(which netns, which config) without trusting the new stdin.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from ipam.sqlite import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS attachment (
    container_id TEXT NOT NULL,
    ifname TEXT NOT NULL,
    network TEXT NOT NULL,
    netns TEXT NOT NULL,
    state TEXT NOT NULL,
    config TEXT NOT NULL,
    result TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (container_id, ifname)
);
"""


@dataclass(frozen=True)
class Attachment:
    container_id: str
    ifname: str
    network: str
    netns: str
    state: str
    config: dict[str, Any]
    result: dict[str, Any] | None


class AttachmentStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(SCHEMA)

    def get(self, container_id: str, ifname: str) -> Attachment | None:
        row = self.db.connection().execute(
            "SELECT container_id, ifname, network, netns, state, config, result FROM attachment "
            "WHERE container_id=? AND ifname=?", (container_id, ifname)).fetchone()
        return _row(row) if row else None

    def begin(self, container_id: str, ifname: str, network: str, netns: str, config: dict[str, Any]) -> bool:
        """Record the intent to add; False if a record for this attachment already exists."""
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO attachment VALUES (?,?,?,?,'adding',?,NULL,?)",
                (container_id, ifname, network, netns, json.dumps(config), time.time()))
            return cur.rowcount == 1

    def finish(self, container_id: str, ifname: str, result: dict[str, Any]) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE attachment SET state='added', result=? WHERE container_id=? AND ifname=?",
                         (json.dumps(result), container_id, ifname))

    def drop(self, container_id: str, ifname: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM attachment WHERE container_id=? AND ifname=?", (container_id, ifname))

    def of_network(self, network: str) -> list[Attachment]:
        rows = self.db.connection().execute(
            "SELECT container_id, ifname, network, netns, state, config, result FROM attachment WHERE network=?",
            (network,)).fetchall()
        return [_row(r) for r in rows]


def _row(row: tuple[Any, ...]) -> Attachment:
    return Attachment(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]),
                      json.loads(row[6]) if row[6] else None)
