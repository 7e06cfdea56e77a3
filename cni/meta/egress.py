"""Egress rate limits for a claim's bandwidth share: an HTB root qdisc on the pod's interface, in the
pod's namespace, with one class at the share's rate (rate = ceil, so the interface never borrows
above it) that all traffic goes to (`default`).

HTB rather than TBF: the kernel's TBF takes rates above 32 bits of bytes per second (34 Gbit/s) only
through TCA_TBF_RATE64, which pyroute2 does not send; HTB's class does (TCA_HTB_RATE64). The qdisc
goes with the interface (a macvlan is deleted, a VF's qdiscs are reset when it leaves the pod's
namespace), so DEL has nothing to remove. What it cannot do: shape ingress, or RDMA traffic that
the NIC sends without passing the netdev's queue (verbs on real hardware bypass qdiscs).
"""

from __future__ import annotations

import errno
from typing import Any, Final

from cni.linux.netns import NetNS
from cni.spec.errors import KERNEL_REFUSED, CniError

ROOT: Final = 0x10000  # 1:
CLASS: Final = 0x10001  # 1:1
QUANTUM: Final = 200_000  # bytes; the kernel's upper bound for a class's quantum
MIN_BURST: Final = 64 << 10


def burst_bytes(rate_bytes: int) -> int:
    """Bytes the class may send at line speed: a millisecond's worth, at least 64 KiB (one TSO frame)."""
    return max(MIN_BURST, rate_bytes // 1000)


def limit(ns: NetNS, ifname: str, rate_bps: int) -> None:
    """Cap `ifname`'s egress at `rate_bps` bits per second (replacing whatever root qdisc it has)."""
    if rate_bps <= 0:
        raise ValueError(f"rate {rate_bps} must be positive")
    index = ns.ipr.link_lookup(ifname=ifname)
    if not index:
        raise CniError(KERNEL_REFUSED, f"cannot limit {ifname}'s egress: the interface is gone")
    rate = max(1, rate_bps // 8)
    try:
        _drop_root(ns, index[0])  # a second ADD starts from the interface's default qdisc
        ns.ipr.tc("add", "htb", index[0], ROOT, default=1)
        ns.ipr.tc("add-class", "htb", index[0], CLASS, parent=ROOT, rate=rate, ceil=rate,
                  burst=burst_bytes(rate), cburst=burst_bytes(rate), quantum=QUANTUM)
    except Exception as exc:  # pyroute2's NetlinkError: an errno
        code = getattr(exc, "code", 0) or errno.EINVAL
        raise CniError(KERNEL_REFUSED, f"kernel refused an HTB egress limit of {rate_bps} bit/s on {ifname}",
                       f"{errno.errorcode.get(code, code)}: is sch_htb available?") from None


def _drop_root(ns: NetNS, index: int) -> None:
    if any(q["handle"] == ROOT and q.get_attr("TCA_KIND") == "htb" for q in ns.ipr.get_qdiscs(index=index)):
        ns.ipr.tc("del", "htb", index, ROOT)


def current(ns: NetNS, ifname: str) -> int | None:
    """The egress rate (bit/s) railnet's class sets on `ifname`, or None without one."""
    index = ns.ipr.link_lookup(ifname=ifname)
    if not index:
        return None
    for cls in ns.ipr.get_classes(index=index[0]):
        if cls["handle"] != CLASS or cls.get_attr("TCA_KIND") != "htb":
            continue
        options: Any = cls.get_attr("TCA_OPTIONS")
        rate64 = options.get_attr("TCA_HTB_RATE64")
        rate = rate64 or options.get_attr("TCA_HTB_PARMS")["rate"]
        return int(rate) * 8
    return None

