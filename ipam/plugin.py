"""railnet-ipam: the CNI IPAM commands over the embedded store.

Used in-process by railnet's attachment drivers, and exec'd (through the shim) by any other
plugin, e.g. the reference macvlan with "ipam": {"type": "railnet-ipam", ...}.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from cni.spec.errors import CHECK_FAILED, INVALID_CONFIG, IO_FAILURE, NOT_AVAILABLE, POOL_EXHAUSTED, CniError
from cni.spec.request import CniRequest
from ipam import probe as conflict_probe
from ipam.config import IPAddress, IpamConf, PoolSpec, parse_ipam
from ipam.pools import PoolRegistry
from ipam.store import Allocation, IpamStore

if TYPE_CHECKING:  # the cluster store pulls in the kubernetes client; only agents with --kubeconfig load it
    from ipam.cluster import ClusterStore

log = logging.getLogger("railnet.ipam")
MAX_PROBE_TRIES = 8  # addresses tried for one ADD before giving up on a pool full of squatters
VALID_ATTACHMENT_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")  # the 1.1.0 text used the second


def valid_attachments(config: dict[str, Any]) -> set[tuple[str, str]]:
    for key in VALID_ATTACHMENT_KEYS:
        if key in config:
            items = config[key]
            if not isinstance(items, list):
                raise CniError(INVALID_CONFIG, f"{key} must be a list", "of {containerID, ifname} objects")
            return {(str(a.get("containerID", "")), str(a.get("ifname", ""))) for a in items if isinstance(a, dict)}
    raise CniError(INVALID_CONFIG, "GC needs the list of valid attachments",
                   "the runtime passes cni.dev/valid-attachments in the config")


def network_of(config: dict[str, Any]) -> str:
    """The network an allocation belongs to: the CNI config's `name` (scopes DEL, CHECK and GC)."""
    return str(config.get("name", ""))


def requested_ips(req: CniRequest) -> list[IPAddress]:
    """Fixed IPs from the 'ips' capability (runtimeConfig) or the older CNI_ARGS IP=a,b."""
    raw: list[str] = []
    runtime = req.config.get("runtimeConfig") or {}
    if isinstance(runtime, dict) and isinstance(runtime.get("ips"), list):
        raw += [str(x) for x in runtime["ips"]]
    if req.args.get("IP"):
        raw += req.args["IP"].split(",")
    try:
        return [ipaddress.ip_interface(x.strip()).ip for x in raw if x.strip()]
    except ValueError as exc:
        raise CniError(INVALID_CONFIG, "requested IP is not an address", str(exc)) from None


class IpamService:
    """Named pools come from the pools dir (embedded), or from IPPool objects when `cluster` is set."""

    def __init__(self, store: IpamStore, pools: PoolRegistry, cluster: ClusterStore | None = None) -> None:
        self.store = store
        self.pools = pools
        self.cluster = cluster

    def resolve(self, config: dict[str, Any]) -> tuple[str, PoolSpec, IpamConf]:
        conf = parse_ipam(config.get("ipam"))
        if conf.pool and self.cluster is not None:
            return conf.pool, self.cluster.pool(conf.pool).to_pool_spec(), conf
        if conf.pool:
            return conf.pool, self.pools.get(conf.pool), conf
        # Inline ranges belong to the network, as with host-local's per-network data dir.
        return f"net:{config.get('name', '')}", conf.inline_spec(), conf

    def add(self, req: CniRequest, config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Allocate; with a pool's `conflictProbe: arp`, probe the IPv4 addresses on the parent NIC first."""
        config = config or req.config
        conf = parse_ipam(config.get("ipam"))
        probe = self._probe_of(conf, config)
        for _ in range(MAX_PROBE_TRIES):
            result, allocs = self._add(req, config, conf)
            if probe is None:
                return result
            v4 = [a for a in allocs if a.address.version == 4]
            try:
                taken = conflict_probe.conflicts(probe, [ipaddress.IPv4Address(int(a.address)) for a in v4])
            except OSError as exc:
                raise CniError(IO_FAILURE, f"ARP probe on {probe} failed: {exc.strerror or exc}",
                               "check the parent NIC, or remove conflictProbe from the pool") from None
            if not taken:
                return result
            for a in v4:
                if a.address in taken:
                    self.store.quarantine(a.pool, str(a.address), f"another host answers ARP on {probe}")
                    log.warning("address in use on the network: quarantined", extra={"fields": {
                        "pool": a.pool, "address": str(a.address), "nic": probe, "cid": req.container_id}})
        raise CniError(POOL_EXHAUSTED, f"{MAX_PROBE_TRIES} addresses in a row are already used by other hosts "
                       f"on {probe}", "they are quarantined (owner railnet-quarantine); find who uses the pool's "
                       "addresses, or exclude them from the pool")

    def _probe_of(self, conf: IpamConf, config: dict[str, Any]) -> str | None:
        """The parent NIC to probe on, when the named pool asks for a probe and the config names a master."""
        if not conf.pool:
            return None
        if self.cluster is not None:
            wanted = self.cluster.pool(conf.pool).conflict_probe
        else:
            wanted = self.pools.get(conf.pool).conflict_probe
        master = config.get("master")
        if wanted != "arp":
            return None
        if not isinstance(master, str) or not master:
            log.warning("pool %s asks for an ARP probe but the network config names no master NIC", conf.pool)
            return None
        return master

    def _add(self, req: CniRequest, config: dict[str, Any], conf: IpamConf) -> tuple[dict[str, Any], list[Allocation]]:
        if conf.pool and self.cluster is not None:
            if requested_ips(req):
                raise CniError(INVALID_CONFIG, f"IP pool {conf.pool!r} is a cluster pool: requested IPs are not "
                               "supported", "fixed IPs come from the pool's fixedRanges (IPReservation)")
            allocs, spec = self.cluster.allocate(conf.pool, network_of(config), req.container_id, req.ifname,
                                                 req.args, req.netns)
            return self.result(allocs, spec, conf), allocs
        pool, spec, conf = self.resolve(config)
        allocs = self.store.allocate(pool, spec, req.container_id, req.ifname, requested_ips(req),
                                     network=network_of(config))
        return self.result(allocs, spec, conf), allocs

    @staticmethod
    def result(allocs: list[Allocation], spec: PoolSpec, conf: IpamConf) -> dict[str, Any]:
        ips = []
        for a in allocs:
            entry: dict[str, Any] = {"address": f"{a.address}/{a.range.network.prefixlen}"}
            gateway = a.range.gateway_ip
            if gateway is not None:
                entry["gateway"] = str(gateway)
            ips.append(entry)
        routes = [r.model_dump(by_alias=True, exclude_none=True) for r in (conf.routes or spec.routes)]
        out: dict[str, Any] = {"ips": ips, "routes": routes}
        dns = conf.dns or spec.dns
        if dns:
            out["dns"] = dns
        return out

    def delete(self, req: CniRequest, config: dict[str, Any] | None = None) -> None:
        config = config or req.config
        pool: str | None
        try:  # the pool's name only: DEL needs neither the pool file nor the API server
            conf = parse_ipam(config.get("ipam"))
            pool = conf.pool or f"net:{config.get('name', '')}"
        except CniError:
            pool = None  # config changed or broken: still release what this attachment holds
        self.store.release(req.container_id, req.ifname, pool, network_of(config))

    def check(self, req: CniRequest, config: dict[str, Any] | None = None) -> None:
        config = config or req.config
        conf = parse_ipam(config.get("ipam"))
        pool = conf.pool or f"net:{config.get('name', '')}"
        if not self.store.held(req.container_id, req.ifname, pool, network_of(config)):
            raise CniError(CHECK_FAILED, f"no address of pool {pool!r} is held by "
                           f"{req.container_id}/{req.ifname}", "the attachment was released; re-create it")

    def gc(self, req: CniRequest) -> list[tuple[str, str, str]]:
        """Release the stale allocations of this network (req.network_name) only, in whatever pool."""
        valid = valid_attachments(req.config)
        pool: str | None
        try:
            conf = parse_ipam(req.config.get("ipam"))
            pool = conf.pool or f"net:{req.config.get('name', '')}"
        except CniError:
            pool = None  # a broken ipam section must not keep the network's stale addresses
        return self.store.gc(req.network_name, valid, pool)

    def status(self, req: CniRequest) -> None:
        pool, spec, conf = self.resolve(req.config)
        if conf.pool and self.cluster is not None:
            return  # a cluster pool: this node claims another block when its own are full
        for ok, rangeset in zip(self.store.has_free(pool, spec), spec.ranges, strict=True):
            if not ok:
                raise CniError(NOT_AVAILABLE, f"IP pool {pool!r} is exhausted",
                               f"no free address in {', '.join(r.subnet for r in rangeset)}")
