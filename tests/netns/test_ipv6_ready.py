"""IPv6 addresses are usable the moment ADD returns: no DAD wait is left to the application.

Without optimistic DAD a new address stays `tentative` for about a second: bind() to it fails with
EADDRNOTAVAIL and it is not used as a source, so a training process that starts at once cannot
listen on its rail. railnet turns on optimistic DAD in the pod (cni.linux.iface): the address is
usable at once and duplicates are still detected. Here two pods get addresses on one rail and, with
no pause after ADD, one listens on its address and the other connects from its own.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

from railnet.dev.lab import ip
from tests.netns.helpers import Env, macvlan_conf

V6 = {"type": "railnet-ipam", "ranges": [[{"subnet": "fd00:93::/64"}]]}

LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.bind((sys.argv[1], 7000))  # EADDRNOTAVAIL here if the address were still tentative
s.listen(1)
print("listening", flush=True)
conn, peer = s.accept()
print(peer[0], conn.recv(16).decode(), flush=True)
"""

CONNECT = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.settimeout(5)
s.bind((sys.argv[1], 0))  # our own new address as the source
s.connect((sys.argv[2], 7000))
s.sendall(b"hello")
"""


def in_ns(netns: str, script: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", Path(netns).name, sys.executable, "-c", script, *args]


def v6_of(result: dict[str, object]) -> str:
    ips = result["ips"]
    assert isinstance(ips, list)
    return next(str(ipaddress.ip_interface(i["address"]).ip) for i in ips
                if ipaddress.ip_interface(i["address"]).version == 6)


def test_ipv6_address_is_usable_when_add_returns(env: Env) -> None:
    server_ns, client_ns = env.lab.netns("v6s"), env.lab.netns("v6c")
    conf = macvlan_conf(env.nic, ipam=V6)
    server = env.call("railnet-macvlan", "ADD", conf, cid="s", ifname="net1", netns=server_ns)
    client = env.call("railnet-macvlan", "ADD", conf, cid="c", ifname="net1", netns=client_ns)
    assert server.ok and client.ok, (server.output, client.output)
    assert server.output is not None and client.output is not None
    server_ip, client_ip = v6_of(server.output), v6_of(client.output)
    flags = ip("-n", Path(server_ns).name, "-6", "addr", "show", "dev", "net1")
    assert "dadfailed" not in flags, flags  # optimistic, not skipped: a duplicate would still show here

    listener = subprocess.Popen(in_ns(server_ns, LISTEN, server_ip), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        first = listener.stdout.readline().strip()
        assert first == "listening", listener.communicate(timeout=10)[1]
        connect = subprocess.run(in_ns(client_ns, CONNECT, client_ip, server_ip), capture_output=True, text=True,
                                 timeout=30)
        assert connect.returncode == 0, connect.stderr
        out, err = listener.communicate(timeout=10)
        assert out.split() == [client_ip, "hello"], (out, err)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    for cid, netns in (("s", server_ns), ("c", client_ns)):
        assert env.call("railnet-macvlan", "DEL", conf, cid=cid, ifname="net1", netns=netns).ok
    env.assert_clean(server_ns, client_ns)
