"""A claim's bandwidth share as an egress limit (cni.meta.egress) in real namespaces: the HTB class
really caps what a macvlan sends (UDP blasted for a second, bytes counted on the receiving side),
an interface without it does not, and the limit goes with the interface."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from cni.linux.netns import NetNS, entered
from cni.meta import egress
from railnet.dev.lab import Lab, ip

RATE = 16_000_000  # bit/s: well below what two macvlans on one veth manage on a busy 2-core machine


@pytest.fixture
def pair(lab: Lab) -> tuple[str, str]:
    """Two namespaces, each with a macvlan on one veth "NIC", 10.93.0.1 and .2 (the lab removes all)."""
    nic = lab.nic("n")
    paths = []
    for n in (1, 2):
        path = lab.netns(f"p{n}")
        name = path.rsplit("/", 1)[1]
        ip("link", "add", "link", nic, "name", f"{lab.prefix}m{n}", "netns", name, "type", "macvlan",
           "mode", "bridge")
        ip("-n", name, "link", "set", f"{lab.prefix}m{n}", "name", "net1")
        ip("-n", name, "addr", "add", f"10.93.0.{n}/24", "dev", "net1")
        ip("-n", name, "link", "set", "net1", "up")
        paths.append(path)
    return paths[0], paths[1]


def received_bits(sender: str, receiver: str, seconds: float = 1.0) -> int:
    """UDP from `sender` to `receiver` as fast as it goes for `seconds`; the bits that arrived."""
    with NetNS(receiver) as ns, entered(ns.fd):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("10.93.0.2", 9999))
    rx.settimeout(0.3)
    got = 0
    done = threading.Event()

    def count() -> None:
        nonlocal got
        while not done.is_set():
            try:
                got += len(rx.recv(65536))
            except TimeoutError:
                continue

    reader = threading.Thread(target=count)
    reader.start()
    with NetNS(sender) as ns, entered(ns.fd):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"x" * 1400
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            tx.sendto(payload, ("10.93.0.2", 9999))
        except OSError:  # ENOBUFS: the qdisc is full, which is the point
            time.sleep(0.0005)
    time.sleep(0.3)  # what the shaper still holds drains
    done.set()
    reader.join()
    tx.close()
    rx.close()
    return got * 8


def test_the_share_caps_egress_and_goes_with_the_interface(pair: tuple[str, str]) -> None:
    sender, receiver = pair
    free = received_bits(sender, receiver)
    with NetNS(sender) as ns:
        egress.limit(ns, "net1", RATE)
        assert egress.current(ns, "net1") == RATE
    shaped = received_bits(sender, receiver)
    # 1 s at the rate plus the burst and what drains after: at most ~1.6x the rate; unshaped is far above
    assert shaped <= RATE * 1.6, (shaped, free)
    assert shaped >= RATE * 0.5, (shaped, free)
    assert free > RATE * 3, f"unshaped traffic should be far faster than the limit: {free} bit/s"

    with NetNS(sender) as ns:
        egress.limit(ns, "net1", RATE * 2)  # a second ADD replaces it
        assert egress.current(ns, "net1") == RATE * 2
        ns.ipr.link("del", index=ns.ipr.link_lookup(ifname="net1")[0])
        assert egress.current(ns, "net1") is None  # gone with the interface


def test_limit_refuses_a_missing_interface(pair: tuple[str, str]) -> None:
    from cni.spec.errors import KERNEL_REFUSED, CniError

    with NetNS(pair[0]) as ns, pytest.raises(CniError) as exc:
        egress.limit(ns, "net9", RATE)
    assert exc.value.code == KERNEL_REFUSED and "net9" in exc.value.msg
