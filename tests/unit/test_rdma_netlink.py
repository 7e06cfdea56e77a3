"""RDMA netlink (cni.linux.rdma): its numbers against the kernel's uapi header, and its messages.

This kernel has no RDMA subsystem, so moving a device is not run here; what can be checked is that
the message railnet sends is the one <rdma/rdma_netlink.h> defines, and that a kernel without RDMA
netlink is read as "nothing to move".
"""

from __future__ import annotations

import errno
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from cni.linux import rdma
from cni.linux.rtnl import parse_attrs

NAMES = ["NETLINK_RDMA", "RDMA_NL_NLDEV", "RDMA_NLDEV_CMD_GET", "RDMA_NLDEV_CMD_SET", "RDMA_NLDEV_CMD_SYS_GET",
         "RDMA_NLDEV_ATTR_DEV_INDEX", "RDMA_NLDEV_ATTR_DEV_NAME", "RDMA_NLDEV_SYS_ATTR_NETNS_MODE",
         "RDMA_NLDEV_NET_NS_FD"]


def test_numbers_match_the_installed_kernel_header(tmp_path: Path) -> None:
    source = tmp_path / "n.c"
    source.write_text("#include <stdio.h>\n#include <linux/netlink.h>\n#include <rdma/rdma_netlink.h>\n"
                      "int main(void){" + "".join(f'printf("%d\\n", {n});' for n in NAMES) + "return 0;}\n")
    build = subprocess.run(["cc", "-o", str(tmp_path / "n"), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, f"needs a C compiler and linux-libc-dev (make sysdeps): {build.stderr}"
    values = [int(v) for v in subprocess.run([str(tmp_path / "n")], capture_output=True, text=True,
                                             check=True).stdout.split()]
    assert dict(zip(NAMES, values, strict=True)) == {n: getattr(rdma, n) for n in NAMES}


def test_the_move_message_carries_the_device_index_and_the_namespace_fd() -> None:
    assert rdma.message_type(rdma.RDMA_NLDEV_CMD_SET) == (5 << 10) + 2
    attrs = parse_attrs(rdma.set_netns_attrs(7, 42))
    assert struct.unpack("=I", attrs[rdma.RDMA_NLDEV_ATTR_DEV_INDEX])[0] == 7
    assert struct.unpack("=I", attrs[rdma.RDMA_NLDEV_NET_NS_FD])[0] == 42


def test_a_kernel_without_rdma_netlink_means_nothing_moves() -> None:
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, rdma.NETLINK_RDMA).close()
    except OSError as exc:
        assert exc.errno == errno.EPROTONOSUPPORT
        assert rdma.exclusive_mode() is False
        with pytest.raises(rdma.RdmaError):
            rdma.RdmaNetlink()
    else:  # a kernel with RDMA: the mode is read, whichever it is
        assert isinstance(rdma.exclusive_mode(), bool)
