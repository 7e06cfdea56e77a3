"""/proc/net/tcp parsing and the annotation's compact form (read back by the job controller)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from jobs.ports import parse_ports
from netmanager.host_listeners import compact, listening_ports

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:9C40 0100007F:0CEA 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000
"""


def test_only_listening_sockets_count_v4_and_v6(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    assert listening_ports(tmp_path) == {3306, 22}  # 0x0CEA LISTEN, 0x0016 LISTEN; 0x9C40 is ESTABLISHED


def test_a_missing_tcp6_file_is_no_ipv6(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(TCP)
    assert listening_ports(tmp_path) == {3306}


def test_compact_form() -> None:
    assert compact([22, 2380, 2379, 31000, 2381]) == "22,2379-2381,31000"
    assert compact([]) == ""


@given(st.sets(st.integers(min_value=1, max_value=65535), max_size=200))
def test_the_controller_reads_back_what_the_agent_writes(ports: set[int]) -> None:
    assert parse_ports(compact(ports)) == ports
