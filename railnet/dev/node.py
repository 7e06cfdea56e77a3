"""The real node of the dev cluster: containerd + runc + kubelet + kube-proxy + CoreDNS on this machine.

kwok nodes never run a container, so nothing ever calls a CNI plugin there. `up --real-node` registers
this machine as one more node whose pods really run. Everything it creates lives under
<cluster dir>/node/: containerd's root, state and socket, the CNI conf and bin dirs (never the machine's
/etc/cni/net.d or /opt/cni/bin), kubelet's root dir and pod logs. Outside that directory it creates, and
`teardown` removes: a cgroup subtree /railnet-<cluster> in each v1 hierarchy, the primary network's
bridge, pod netns/veths (by CNI DEL), kube-proxy's iptables chains (`kube-proxy --cleanup`), the shim
sockets in /run/containerd/s, and the host sysctls kubelet and kube-proxy change (restored).

Only one real node runs on a machine at a time: kube-proxy's chains are machine-wide.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from railnet.dev import images, k8sbin

NODE_PROCESSES: Final = ("containerd", "kubelet", "kube-proxy", "coredns")  # start order
REAL_NODE_LABEL: Final = "railnet.io/real-node"
DNS_SERVICE_IP: Final = "10.96.0.10"
CLUSTER_DOMAIN: Final = "cluster.local"
CNI_PLUGIN_DIRS: Final = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))  # Debian's containernetworking-plugins
CNI_PLUGINS: Final = ("bridge", "host-local", "loopback", "portmap")
CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
SHIM_SOCKET_DIR: Final = Path("/run/containerd/s")
# The kubelet's device manager listens here whatever --root-dir says (a path fixed in the kubelet).
DEVICE_PLUGIN_DIR: Final = Path("/var/lib/kubelet/device-plugins")
# Host sysctls that kubelet (kernel tunables) and kube-proxy / the bridge plugin may set: restored on down.
SYSCTLS: Final = (
    "vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes", "net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet",
)
RUNC_CANDIDATES: Final = ("/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc")

Log = Callable[[str], None]


class NodeError(RuntimeError):
    """The real node could not be started; the message says which step failed and why."""


@dataclass(frozen=True)
class Layout:
    """Every path and name of one cluster's real node."""

    cluster_dir: Path
    cluster: str

    @property
    def dir(self) -> Path:
        return self.cluster_dir / "node"

    @property
    def node_name(self) -> str:
        return "real-node"

    @property
    def tag(self) -> str:
        return hashlib.sha256(str(self.cluster_dir).encode()).hexdigest()[:8]

    @property
    def bridge(self) -> str:
        return f"rnbr{self.tag}"  # <= 15 characters

    @property
    def cgroup(self) -> str:
        return f"railnet-{self.tag}"

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def cni_bin(self) -> Path:
        return self.dir / "cni" / "bin"

    @property
    def cni_conf(self) -> Path:
        return self.dir / "cni" / "net.d"

    @property
    def cdi_dir(self) -> Path:
        """containerd's only CDI spec dir (not /etc/cdi, /var/run/cdi): DRA drivers under test write here."""
        return self.dir / "cdi"

    @property
    def kubelet_root(self) -> Path:
        return self.dir / "kubelet"

    @property
    def snapshot(self) -> Path:
        return self.dir / "host-before.json"


def machine_lock() -> Path:
    from railnet.dev.devcluster import home

    return home() / ".real-node"


# ------------------------------------------------------------------------------------ host state


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key


def read_sysctls() -> dict[str, str]:
    out = {}
    for key in SYSCTLS:
        with contextlib.suppress(OSError):
            out[key] = _sysctl_path(key).read_text().strip()
    return out


def iptables_rules() -> list[str]:
    """The rule set as iptables-save shows it, without counters and comments (for before/after diffs)."""
    lines: list[str] = []
    for tool in ("iptables-save", "ip6tables-save"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            text = subprocess.run([tool], capture_output=True, text=True, timeout=60).stdout
            lines += [re.sub(r"\[\d+:\d+\]", "", ln).strip() for ln in text.splitlines()
                      if ln and not ln.startswith("#")]
    return lines


def nft_tables() -> list[str]:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=30).stdout
        return sorted(ln.strip() for ln in out.splitlines() if ln.strip())
    return []


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` (from /proc/self/mountinfo), deepest first."""
    prefix = str(path)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def cgroup_dirs(name: str) -> list[Path]:
    """The cgroup directories of the node's subtree that exist, one per v1 hierarchy."""
    if not CGROUP_ROOT.is_dir():
        return []
    return [d / name for d in sorted(CGROUP_ROOT.iterdir()) if (d / name).is_dir() and not d.is_symlink()]


def host_ip() -> str:
    """The address of the default route's interface: pods and host-network pods both reach it."""
    out = subprocess.run(["ip", "-4", "-j", "route", "get", "1.1.1.1"], capture_output=True, text=True,
                         timeout=10)
    with contextlib.suppress(ValueError, IndexError, KeyError):
        return str(json.loads(out.stdout)[0]["prefsrc"])
    raise NodeError(f"cannot find this machine's address (ip route get 1.1.1.1: {out.stderr.strip()})")


def pick_pod_cidr(tag: str) -> str:
    """A /24 in 10.200.0.0/16 no route of the machine overlaps (start from the cluster's hash)."""
    used = subprocess.run(["ip", "-4", "-j", "route", "show", "table", "all"], capture_output=True, text=True,
                          timeout=10).stdout
    nets = []
    for r in json.loads(used or "[]"):
        with contextlib.suppress(ValueError):
            dst = r.get("dst", "")
            if dst and dst not in ("default", "multicast", "broadcast"):
                nets.append(ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False))
    start = int(tag, 16) % 256
    for i in range(256):
        cand = ipaddress.ip_network(f"10.200.{(start + i) % 256}.0/24")
        if not any(cand.overlaps(n) for n in nets):
            return str(cand)
    raise NodeError("no free /24 for the node's pods in 10.200.0.0/16")


# ---------------------------------------------------------------------------------------- config


def _find_runc() -> str:
    for cand in RUNC_CANDIDATES:
        if os.access(cand, os.X_OK):
            return cand
    raise NodeError("runc is not installed (apt-get install runc; `make sysdeps` does it)")


def install_cni(lay: Layout, pod_cidr: str) -> None:
    """Copy the reference plugins into the private bin dir and write the primary network's conflist."""
    lay.cni_bin.mkdir(parents=True, exist_ok=True)
    lay.cni_conf.mkdir(parents=True, exist_ok=True)
    for plugin in CNI_PLUGINS:
        src = next((d / plugin for d in CNI_PLUGIN_DIRS if (d / plugin).is_file()), None)
        if src is None:
            raise NodeError(f"CNI plugin {plugin} not found in {', '.join(map(str, CNI_PLUGIN_DIRS))}: "
                            "apt-get install containernetworking-plugins")
        shutil.copy2(src, lay.cni_bin / plugin)
    net = ipaddress.ip_network(pod_cidr)
    conflist = {
        "cniVersion": "1.0.0",
        "name": "railnet-primary",
        "plugins": [
            {
                "type": "bridge",
                "bridge": lay.bridge,
                "isGateway": True,
                "ipMasq": False,  # pods need no way out; kube-proxy masquerades service traffic
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr, "gateway": str(net.network_address + 1)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(lay.dir / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (lay.cni_conf / "10-railnet-primary.conflist").write_text(json.dumps(conflist, indent=2) + "\n")


_RUNC_WRAPPER: Final = """#!/usr/bin/python3
# Written by railnet.dev.node. This machine's root lacks CAP_SYS_RESOURCE, so runc cannot lower
# oom_score_adj (kubelet asks -998 for sandboxes, -997 for Guaranteed pods) and every container fails with
# "nsexec: failed to update /proc/self/oom_score_adj: Permission denied". Clamp the value to our own.
import json, os, sys
RUNC = {runc!r}
args = sys.argv[1:]
def clamp(path, key_path):
    try:
        with open(path) as fh:
            spec = json.load(fh)
    except OSError:
        return
    proc = spec
    for key in key_path:
        proc = proc.get(key) if isinstance(proc, dict) else None
    floor = int(open("/proc/self/oom_score_adj").read())
    if isinstance(proc, dict) and proc.get("oomScoreAdj", floor) < floor:
        proc["oomScoreAdj"] = floor
        with open(path, "w") as fh:
            json.dump(spec, fh)
for flag, keys in (("--bundle", ("process",)), ("-b", ("process",)), ("--process", ()), ("-p", ())):
    if flag in args[:-1]:
        target = args[args.index(flag) + 1]
        clamp(os.path.join(target, "config.json") if keys else target, keys)
os.execv(RUNC, [RUNC, *args])
"""


def _cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 24))
    return True


def write_runc_wrapper(lay: Layout) -> str:
    """The runc containerd runs: Debian's, or a clamping wrapper where CAP_SYS_RESOURCE is missing."""
    runc = _find_runc()
    if _cap_sys_resource():
        return runc
    wrapper = lay.dir / "runc"
    wrapper.write_text(_RUNC_WRAPPER.format(runc=runc))
    wrapper.chmod(0o755)
    return str(wrapper)


def containerd_config(lay: Layout) -> str:
    root, state = lay.dir / "containerd" / "root", lay.dir / "containerd" / "state"
    return f"""version = 3
root = "{root}"
state = "{state}"
[grpc]
  address = "{lay.socket}"
[ttrpc]
  address = "{lay.socket}.ttrpc"
[plugins.'io.containerd.internal.v1.opt']
  path = "{root}/opt"
[plugins.'io.containerd.image-verifier.v1.bindir']
  bin_dir = "{root}/image-verifier"
[plugins.'io.containerd.nri.v1.nri']
  socket_path = "{lay.dir}/nri.sock"
  plugin_path = "{lay.dir}/nri/plugins"
  plugin_config_path = "{lay.dir}/nri/conf.d"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{images.PAUSE_IMAGE}"
[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = ["{lay.cdi_dir}"]
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{write_runc_wrapper(lay)}"
        Root = "{state}/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{lay.cni_bin}"]
    conf_dir = "{lay.cni_conf}"
    max_conf_num = 1
"""


def kubelet_config(lay: Layout, pki: Path, port: int, healthz: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "0.0.0.0",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz,
        "containerRuntimeEndpoint": f"unix://{lay.socket}",
        "podLogsDir": str(lay.dir / "pod-logs"),
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{lay.cgroup}",
        "failCgroupV1": False,  # the development machines have hybrid cgroups v1
        "failSwapOn": False,
        "memorySwap": {"swapBehavior": "NoSwap"},
        "protectKernelDefaults": False,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "AlwaysAllow"},  # only holders of a cert of the cluster's CA get in
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(lay.dir / "resolv.conf"),
        # A shared test machine: never evict because other work fills the disk or memory, never GC images.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "evictionPressureTransitionPeriod": "10s",
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "maxPods": 110,
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "runtimeRequestTimeout": "2m",
        "shutdownGracePeriod": "0s",
        "localStorageCapacityIsolation": True,
        "enableServer": True,
        "registerNode": True,
    }


def kube_proxy_config(lay: Layout, kubeconfig: Path, healthz: int, metrics: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "hostnameOverride": lay.node_name,
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "healthzBindAddress": f"127.0.0.1:{healthz}",
        "metricsBindAddress": f"127.0.0.1:{metrics}",
        # Pod -> ClusterIP -> pod on the same bridge: without br_netfilter the reply would bypass the DNAT,
        # so service traffic is masqueraded (no host-wide bridge sysctl needed).
        "iptables": {"masqueradeAll": True, "localhostNodePorts": False, "syncPeriod": "10s",
                     "minSyncPeriod": "1s"},
        # 0 = leave the machine's conntrack settings alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "nodePortAddresses": ["primary"],
    }


def corefile(bind_ip: str, port: int, kubeconfig: Path, health: int) -> str:
    return f""".:{port} {{
    bind {bind_ip}
    errors
    health 127.0.0.1:{health}
    ready 127.0.0.1:{health + 1}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
    loop
    reload
}}
"""


def dns_objects(host: str, port: int) -> list[tuple[str, dict[str, Any]]]:
    """Service kube-system/kube-dns (ClusterIP 10.96.0.10) with a manual EndpointSlice to CoreDNS on the host."""
    svc = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
        "spec": {"clusterIP": DNS_SERVICE_IP, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": port},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": port}]},
    }
    eps = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kube-dns-host", "namespace": "kube-system",
                     "labels": {"kubernetes.io/service-name": "kube-dns",
                                "endpointslice.kubernetes.io/managed-by": "railnet-dev"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
        "ports": [{"name": "dns", "port": port, "protocol": "UDP"},
                  {"name": "dns-tcp", "port": port, "protocol": "TCP"}],
    }
    return [("/api/v1/namespaces/kube-system/services", svc),
            ("/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices", eps)]


# ----------------------------------------------------------------------------------- cgroups


def make_cgroup(name: str) -> None:
    """Create /<name> in every v1 hierarchy (kubelet's --cgroup-root must exist)."""
    for hier in sorted(CGROUP_ROOT.iterdir()):
        if hier.is_symlink() or not (hier / "cgroup.procs").exists():
            continue
        d = hier / name
        d.mkdir(exist_ok=True)
        if hier.name == "cpuset" or (hier / "cpuset.cpus").exists():
            for f in ("cpuset.cpus", "cpuset.mems"):
                with contextlib.suppress(OSError):
                    if not (d / f).read_text().strip():
                        (d / f).write_text((hier / f).read_text())


def remove_cgroup(name: str, log: Log) -> list[str]:
    """Kill what is still in the subtree, then rmdir it bottom-up. Returns what could not be removed."""
    left = []
    for top in cgroup_dirs(name):
        dirs = sorted((p for p in [top, *top.rglob("*")] if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in dirs:
            with contextlib.suppress(OSError):
                for pid in (d / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        for d in dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                left.append(str(d))
    if left:
        log(f"    could not remove cgroups: {left}")
    return left


# --------------------------------------------------------------------------------- processes


def shim_processes(socket: Path) -> list[int]:
    """containerd-shim-runc-v2 processes started by this node's containerd (their -address is our socket)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in argv:
                pids.append(int(proc.name))
    return pids


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.05)


def shim_sockets(lay: Layout) -> list[Path]:
    """The shim sockets (in /run/containerd/s) named by the `address` files of this node's task bundles."""
    out = []
    for addr in (lay.dir / "containerd" / "state").glob("io.containerd.runtime.v2.task/*/*/address"):
        with contextlib.suppress(OSError):
            text = addr.read_text().strip()
            if text.startswith("unix://"):
                out.append(Path(text.removeprefix("unix://")))
    return out


COREDNS_USER: Final = "system:railnet-dev:coredns"


def node_identities(node_name: str) -> dict[str, tuple[str, str | None]]:
    """Each node component's client identity (CN, O): least privilege, as a kubeadm node has it.

    The kubelet is a node (the API server's Node authorizer and NodeRestriction admission limit it to
    its own Node, Lease and the pods bound to it); kube-proxy is the user the bootstrap
    `system:node-proxier` binding names; CoreDNS gets only the reads in `coredns_rbac`.
    """
    return {"kubelet": (f"system:node:{node_name}", "system:nodes"),
            "kube-proxy": ("system:kube-proxy", None),
            "coredns": (COREDNS_USER, None)}


def client_cert(pki: Path, stem: str, cn: str, org: str | None) -> None:
    """`<pki>/<stem>.crt` and `.key`: a client certificate signed by the cluster's CA."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    names = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
    subject = x509.Name([*names, x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    (pki / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile = pki / f"{stem}.key"
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    keyfile.chmod(0o600)


def kubeconfig(server: str, pki: Path, user: str, stem: str) -> str:
    doc = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "dev", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {"client-certificate": str(pki / f"{stem}.crt"),
                                          "client-key": str(pki / f"{stem}.key")}}],
        "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": user}}],
        "current-context": "dev",
    }
    return json.dumps(doc, indent=2) + "\n"


def write_identities(lay: Layout, server: str, pki: Path) -> dict[str, Path]:
    """A certificate and a kubeconfig per node component; returns the kubeconfig paths by component."""
    paths = {}
    for component, (cn, org) in node_identities(lay.node_name).items():
        client_cert(pki, component, cn, org)
        paths[component] = lay.dir / f"{component}.kubeconfig"
        paths[component].write_text(kubeconfig(server, pki, cn, component))
    return paths


def coredns_rbac() -> list[tuple[str, dict[str, Any]]]:
    """What CoreDNS's kubernetes plugin reads (list/watch), and nothing else."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "railnet-dev:coredns"},
        "rules": [{"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                  {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "railnet-dev:coredns"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "railnet-dev:coredns"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}],
    }
    return [("/apis/rbac.authorization.k8s.io/v1/clusterroles", role),
            ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)]


def crictl(lay: Layout, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(k8sbin.bin_dir() / "crictl"), f"--runtime-endpoint=unix://{lay.socket}",
                           f"--image-endpoint=unix://{lay.socket}", "--timeout=30s", *args],
                          capture_output=True, text=True, timeout=timeout)


def bridge_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _device_plugin_files() -> list[str]:
    return sorted(p.name for p in DEVICE_PLUGIN_DIR.iterdir()) if DEVICE_PLUGIN_DIR.is_dir() else []


def remove_kubelet_fixed_paths(before: Mapping[str, Any]) -> None:
    """What the kubelet made under /var/lib/kubelet (its device-plugin socket and checkpoint)."""
    for name in set(_device_plugin_files()) - set(before.get("device_plugin_files", [])):
        with contextlib.suppress(OSError):
            (DEVICE_PLUGIN_DIR / name).unlink()
    for path in (DEVICE_PLUGIN_DIR, DEVICE_PLUGIN_DIR.parent):
        if str(path) not in before.get("kubelet_dirs", [str(path)]):
            with contextlib.suppress(OSError):
                path.rmdir()


def leftovers(lay: Layout, before: Mapping[str, Any] | None = None) -> list[str]:
    """What the node would have left on the machine: empty after a clean teardown."""
    found = []
    found += [f"mount {m}" for m in mounts_under(lay.dir)]
    found += [f"cgroup {d}" for d in cgroup_dirs(lay.cgroup)]
    if bridge_exists(lay.bridge):
        found.append(f"bridge {lay.bridge}")
    found += [f"shim pid {p}" for p in shim_processes(lay.socket)]
    found += [f"socket {s}" for s in shim_sockets(lay) if s.exists()]
    if before is not None:
        added = sorted(set(iptables_rules()) - set(before.get("iptables", [])))
        found += [f"iptables {r}" for r in added if "KUBE-" in r or "CNI-" in r]
        found += [f"nft table {t}" for t in set(nft_tables()) - set(before.get("nft", []))]
        if "device_plugin_files" in before:
            added_files = set(_device_plugin_files()) - set(before["device_plugin_files"])
            found += [f"file {DEVICE_PLUGIN_DIR / f}" for f in sorted(added_files)]
            found += [f"dir {d}" for d in (DEVICE_PLUGIN_DIR, DEVICE_PLUGIN_DIR.parent)
                      if d.exists() and str(d) not in before.get("kubelet_dirs", [])]
    return found


# ------------------------------------------------------------------------------------ life cycle


def _wait(what: str, probe: Callable[[], bool], deadline: float, alive: Callable[[], bool],
          tail: Callable[[], str]) -> None:
    while not probe():
        if not alive():
            raise NodeError(f"{what}: the process exited:\n{tail()}")
        if time.monotonic() > deadline:
            raise NodeError(f"{what}: not ready in time:\n{tail()}")
        time.sleep(0.2)


def claim_machine(lay: Layout) -> None:
    """One real node per machine (kube-proxy's iptables chains are global): fail if another one runs."""
    lock = machine_lock()
    lock.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError, ValueError):
        other = Path(json.loads(lock.read_text())["dir"])
        if other != lay.cluster_dir and (other / "node").is_dir():
            state = json.loads((other / "state.json").read_text())
            from railnet.dev.devcluster import _alive

            procs = state.get("processes", {})
            if any(_alive(int(procs[n]["pid"]), procs[n].get("start")) for n in NODE_PROCESSES if n in procs):
                raise NodeError(f"another dev cluster runs a real node on this machine ({other}); only one "
                                f"can (kube-proxy's iptables chains are machine-wide): `railnet dev-cluster down "
                                f"--state-dir {other}` first")
    tmp = lock.with_suffix(".tmp")
    tmp.write_text(json.dumps({"dir": str(lay.cluster_dir), "pid": os.getpid()}))
    os.replace(tmp, lock)


def release_machine(lay: Layout) -> None:
    lock = machine_lock()
    with contextlib.suppress(OSError, ValueError, KeyError):
        if Path(json.loads(lock.read_text())["dir"]) == lay.cluster_dir:
            lock.unlink()


def host_state() -> dict[str, Any]:
    """What `leftovers` compares with: the machine-wide things a node adds to."""
    return {
        "iptables": iptables_rules(),
        "nft": nft_tables(),
        "kubelet_dirs": [str(p) for p in (DEVICE_PLUGIN_DIR.parent, DEVICE_PLUGIN_DIR) if p.exists()],
        "device_plugin_files": _device_plugin_files(),
    }


def snapshot_host(lay: Layout) -> dict[str, Any]:
    snap = {
        **host_state(),
        "sysctls": read_sysctls(),
        "run_containerd": Path("/run/containerd").exists(),
        "shim_dir": SHIM_SOCKET_DIR.exists(),
    }
    lay.dir.mkdir(parents=True, exist_ok=True)
    lay.snapshot.write_text(json.dumps(snap, indent=1) + "\n")
    return snap


def remove_added_chains(before: list[str], log: Log) -> None:
    """Delete the KUBE-*/CNI-* rules and chains that were not there before `up` (kubelet's canaries too).

    Only rules that did not exist before and that name such a chain are touched: never anyone else's.
    """
    old = set(before)
    for family, save, tool in (("ipv4", "iptables-save", "iptables"), ("ipv6", "ip6tables-save", "ip6tables")):
        try:
            text = subprocess.run([save], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        table, chains, rules = "", [], []
        for raw in text.splitlines():
            line = re.sub(r"\[\d+:\d+\]", "", raw).strip()
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":") and re.match(r":(KUBE-|CNI-)", line) and line not in old:
                chains.append((table, line[1:].split()[0]))
            elif line.startswith("-A") and re.search(r"(KUBE-|CNI-)", line) and line not in old:
                rules.append((table, line))
        for table, rule in rules:
            args = ["-D", *_split_rule(rule)[1:]]
            subprocess.run([tool, "-w", "-t", table, *args], capture_output=True, timeout=30)
        for table, chain in chains:
            subprocess.run([tool, "-w", "-t", table, "-F", chain], capture_output=True, timeout=30)
        for table, chain in chains:
            subprocess.run([tool, "-w", "-t", table, "-X", chain], capture_output=True, timeout=30)
        if rules or chains:
            log(f"    removed {len(rules)} {family} rules and {len(chains)} chains the node had added")


def remove_added_empty_tables(before: list[str], log: Log) -> None:
    """Drop the iptables-nft tables (ip/ip6 filter, nat, mangle) that appeared with the node and hold no rules.

    iptables-nft creates a table on first use and nobody deletes it; an empty one that did not exist
    before `up` is ours. A table with any rule is left alone.
    """
    dropped = []
    for table in sorted(set(nft_tables()) - set(before)):
        parts = table.split()
        if len(parts) != 3 or parts[1] not in ("ip", "ip6") or parts[2] not in ("filter", "nat", "mangle"):
            continue
        try:
            text = subprocess.run(["nft", "list", *parts], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        body = [ln.strip() for ln in text.splitlines()]
        chains = [ln.split()[1] for ln in body if ln.startswith("chain ")]
        rules = [ln for ln in body if ln and not ln.startswith(("table ", "chain ", "type ", "}", "policy "))]
        if not rules and all(c.isupper() for c in chains):
            subprocess.run(["nft", "delete", *parts], capture_output=True, timeout=30)
            dropped.append(" ".join(parts[1:]))
    if dropped:
        log(f"    removed the empty nftables tables that appeared with the node: {', '.join(dropped)}")


def _split_rule(rule: str) -> list[str]:
    import shlex

    return shlex.split(rule)


def _umount(path: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(path.encode(), 2)  # MNT_DETACH


def teardown(lay: Layout, procs: Mapping[str, Mapping[str, Any]], log: Log) -> list[str]:
    """Stop the node and remove everything it made on the machine; return what could not be removed."""
    from railnet.dev.devcluster import _alive, _stop_pids

    if not lay.dir.exists():
        return []
    try:
        before = json.loads(lay.snapshot.read_text())
    except (OSError, ValueError):
        before = {}
    _stop_pids({n: procs[n] for n in ("kubelet",) if n in procs})
    ctrd = procs.get("containerd")
    if ctrd and _alive(int(ctrd["pid"]), ctrd.get("start")) and (k8sbin.bin_dir() / "crictl").exists():
        # Removing the sandboxes through containerd runs CNI DEL: veths, IPs and netns go the proper way.
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            crictl(lay, "rmp", "--all", "--force", timeout=180)
    _stop_pids({n: procs[n] for n in ("kube-proxy", "coredns", "containerd") if n in procs})
    proxy = k8sbin.bin_dir() / "kube-proxy"
    if proxy.exists() and before:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run([str(proxy), "--cleanup", "--v=0"], capture_output=True, timeout=120)
    if before:
        remove_added_chains(before.get("iptables", []), log)
        remove_added_empty_tables(before.get("nft", []), log)
    sockets = shim_sockets(lay)
    kill_pids(shim_processes(lay.socket))
    remove_cgroup(lay.cgroup, log)
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.unlink()
    for _ in range(3):
        for point in mounts_under(lay.dir):
            _umount(point)
        if not mounts_under(lay.dir):
            break
        time.sleep(0.2)
    if bridge_exists(lay.bridge):
        subprocess.run(["ip", "link", "del", lay.bridge], capture_output=True, timeout=30)
    for key, value in (before.get("sysctls") or {}).items():
        with contextlib.suppress(OSError):
            if _sysctl_path(key).read_text().strip() != value:
                _sysctl_path(key).write_text(value)
    if before:
        remove_kubelet_fixed_paths(before)
    for existed, path in ((before.get("shim_dir", True), SHIM_SOCKET_DIR),
                          (before.get("run_containerd", True), Path("/run/containerd"))):
        if not existed:
            with contextlib.suppress(OSError):
                path.rmdir()
    left = leftovers(lay, before or None)
    if not left:
        release_machine(lay)
    return left


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def start(cluster: Any, state: dict[str, Any], log: Log, deadline: float) -> None:
    """Start containerd, kubelet, kube-proxy and CoreDNS for `cluster` (a DevCluster) and wait for Ready.

    Processes are spawned through the cluster, so they are recorded in its state like the control plane.
    """
    from railnet.dev.devcluster import _alive

    lay = Layout(cluster.dir, cluster.name)
    bins = k8sbin.bin_dir()
    claim_machine(lay)
    before = snapshot_host(lay)
    t0 = time.monotonic()
    pki = cluster.pki
    kubeconfigs = write_identities(lay, state["server"], pki)
    pod_cidr = pick_pod_cidr(lay.tag)
    ip = host_ip()
    state["node"] = {"name": lay.node_name, "dir": str(lay.dir), "pod_cidr": pod_cidr, "bridge": lay.bridge,
                     "cgroup": lay.cgroup, "host_ip": ip, "socket": str(lay.socket),
                     "sysctls_before": before["sysctls"]}
    cluster._save(state)
    install_cni(lay, pod_cidr)
    make_cgroup(lay.cgroup)

    def alive(name: str) -> Callable[[], bool]:
        return lambda: _alive(int(state["processes"][name]["pid"]), state["processes"][name].get("start"))

    def tail(name: str) -> Callable[[], str]:
        return lambda: str(cluster.log_tail(name))

    env = {**os.environ, "PATH": f"{bins}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}
    lay.cdi_dir.mkdir(parents=True, exist_ok=True)  # containerd's CDI cache watches it from the start
    (lay.dir / "containerd.toml").write_text(containerd_config(lay))
    cluster._spawn(state, "containerd", [str(bins / "containerd"), "--config", str(lay.dir / "containerd.toml"),
                                         "--log-level=warn"], env=env)
    _wait("containerd", lambda: lay.socket.exists() and crictl(lay, "info").returncode == 0, deadline,
          alive("containerd"), tail("containerd"))
    for image in images.build_all(log):
        images.import_image(image, bins / "ctr", lay.socket)
    log(f"    containerd up, images imported in {time.monotonic() - t0:.1f}s")

    resolv = Path("/etc/resolv.conf")
    (lay.dir / "resolv.conf").write_text(resolv.read_text() if resolv.exists() else "")
    port, healthz = _free_port(), _free_port()
    (lay.dir / "kubelet.yaml").write_text(json.dumps(kubelet_config(lay, pki, port, healthz), indent=2))
    cluster._spawn(state, "kubelet", [
        str(bins / "kubelet"), f"--config={lay.dir / 'kubelet.yaml'}", f"--kubeconfig={kubeconfigs['kubelet']}",
        f"--root-dir={lay.kubelet_root}", f"--cert-dir={lay.dir / 'kubelet-pki'}",
        f"--hostname-override={lay.node_name}", f"--node-ip={ip}",
        f"--node-labels={REAL_NODE_LABEL}=true", "--v=1",
    ], env=env)
    api = cluster.api()
    path = f"/api/v1/nodes/{lay.node_name}"
    _wait("kubelet registering the node", lambda: api.request("GET", path)[0] == 200, deadline,
          alive("kubelet"), tail("kubelet"))
    _patch(api, path, {"spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}})

    def ready() -> bool:
        node = api.request("GET", path)[1]
        conds = node.get("status", {}).get("conditions") or [] if isinstance(node, dict) else []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    _wait("kubelet: node Ready", ready, deadline, alive("kubelet"), tail("kubelet"))
    log(f"    node {lay.node_name} Ready in {time.monotonic() - t0:.1f}s (pods {pod_cidr} on {lay.bridge})")

    _create(api, coredns_rbac())
    guard_service_cidr(log)
    ph, pm = _free_port(), _free_port()
    (lay.dir / "kube-proxy.yaml").write_text(json.dumps(kube_proxy_config(lay, kubeconfigs["kube-proxy"], ph, pm),
                                                              indent=2))
    cluster._spawn(state, "kube-proxy", [str(bins / "kube-proxy"), f"--config={lay.dir / 'kube-proxy.yaml'}",
                                         "--v=1"], env=env)
    dns_port, dns_health = _free_port(), _free_port()
    while dns_health + 1 > 65535 or not _port_free(dns_health + 1):
        dns_health = _free_port()
    (lay.dir / "Corefile").write_text(corefile(ip, dns_port, kubeconfigs["coredns"], dns_health))
    cluster._spawn(state, "coredns", [str(bins / "coredns"), "-conf", str(lay.dir / "Corefile")], env=env)
    for url, name in ((f"http://127.0.0.1:{ph}/healthz", "kube-proxy"),
                      (f"http://127.0.0.1:{dns_health + 1}/ready", "coredns")):
        _wait(name, functools.partial(_http_ok, url), deadline, alive(name), tail(name))
    _create(api, dns_objects(ip, dns_port))
    state["node"].update(kubelet_port=port, dns_port=dns_port)
    cluster._save(state)
    log(f"    kube-proxy and CoreDNS up ({DNS_SERVICE_IP} -> {ip}:{dns_port}) in {time.monotonic() - t0:.1f}s")


SERVICE_GUARD: Final = "KUBE-RAILNET-DEV-GUARD"  # KUBE- prefix: `down` removes it with kube-proxy's chains


def guard_service_cidr(log: Log) -> None:
    """Reject traffic to a ClusterIP kube-proxy has not programmed (yet): without this it follows the
    machine's default route and leaves the machine. filter runs after nat, so every Service kube-proxy
    already DNATs is untouched; host processes (OUTPUT) and pods (FORWARD) are both covered."""
    from railnet.dev.devcluster import SERVICE_CIDR

    def ipt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["iptables", "-w", "-t", "filter", *args], capture_output=True, text=True, timeout=30)

    if ipt("-n", "-L", SERVICE_GUARD).returncode != 0:
        ipt("-N", SERVICE_GUARD)
    ipt("-F", SERVICE_GUARD)
    ipt("-A", SERVICE_GUARD, "-d", SERVICE_CIDR, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset")
    ipt("-A", SERVICE_GUARD, "-d", SERVICE_CIDR, "-j", "REJECT", "--reject-with", "icmp-net-unreachable")
    for hook in ("OUTPUT", "FORWARD"):
        if ipt("-C", hook, "-j", SERVICE_GUARD).returncode != 0:
            done = ipt("-I", hook, "1", "-j", SERVICE_GUARD)
            if done.returncode != 0:
                raise NodeError(f"iptables -I {hook} -j {SERVICE_GUARD}: {done.stderr.strip()}")
    log(f"    unprogrammed ClusterIPs in {SERVICE_CIDR} are rejected on this machine ({SERVICE_GUARD})")


def _create(api: Any, objects: list[tuple[str, dict[str, Any]]]) -> None:
    for collection, obj in objects:
        code, resp = api.request("POST", collection, obj)
        if code not in (201, 409):
            raise NodeError(f"creating {obj['kind']} {obj['metadata']['name']}: HTTP {code}: {resp}")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _patch(api: Any, path: str, body: dict[str, Any]) -> None:
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode()
    req = urllib.request.Request(api.server + path, data=data, method="PATCH")
    req.add_header("Content-Type", "application/strategic-merge-patch+json")
    req.add_header("Accept", "application/json")
    try:
        with urllib.request.urlopen(req, context=api._ctx, timeout=10):
            pass
    except urllib.error.HTTPError as exc:
        raise NodeError(f"PATCH {path}: HTTP {exc.code}: {exc.read()[:300]!r}") from None


def restart(cluster: Any, names: tuple[str, ...], timeout: float = 60) -> None:
    """Start recorded node processes again with their recorded command lines (after a crash or kill).

    Each one is waited for before the next starts, as a service manager orders them: a kubelet started
    before containerd answers on its socket exits at once ("validate CRI v1 runtime API").
    """
    from railnet.dev.devcluster import _alive

    state = cluster.state()
    lay = Layout(cluster.dir, cluster.name)
    bins = k8sbin.bin_dir()
    env = {**os.environ, "PATH": f"{bins}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}
    deadline = time.monotonic() + timeout
    probes: dict[str, Callable[[], bool]] = {
        "containerd": lambda: lay.socket.exists() and crictl(lay, "info").returncode == 0,
        "kubelet": functools.partial(_http_ok, f"http://127.0.0.1:{_kubelet_healthz(lay)}/healthz"),
    }
    for name in names:
        cluster._spawn(state, name, state["processes"][name]["argv"], env=env)
        proc = state["processes"][name]
        _wait(f"{name} after a restart", probes.get(name, lambda: True), deadline,
              functools.partial(_alive, int(proc["pid"]), proc.get("start")),
              functools.partial(cluster.log_tail, name))


def _kubelet_healthz(lay: Layout) -> int:
    return int(json.loads((lay.dir / "kubelet.yaml").read_text())["healthzPort"])
