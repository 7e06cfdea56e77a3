"""railnet-ipam: the CNI IPAM commands over the embedded store.

Used in-process by railnet's attachment drivers, and exec'd (through the shim) by any other
plugin, e.g. the reference macvlan with "ipam": {"type": "railnet-ipam", ...}.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from cni.spec.errors import CHECK_FAILED, INVALID_CONFIG, NOT_AVAILABLE, CniError
from cni.spec.request import CniRequest
from ipam.config import IPAddress, IpamConf, PoolSpec, parse_ipam
from ipam.pools import PoolRegistry
from ipam.store import Allocation, IpamStore

if TYPE_CHECKING:  # the cluster store pulls in the kubernetes client; only agents with --kubeconfig load it
    from ipam.cluster import ClusterStore

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
        config = config or req.config
        conf = parse_ipam(config.get("ipam"))
        if conf.pool and self.cluster is not None:
            if requested_ips(req):
                raise CniError(INVALID_CONFIG, f"IP pool {conf.pool!r} is a cluster pool: requested IPs are not "
                               "supported", "fixed IPs come from the pool's fixedRanges (IPReservation)")
            allocs, spec = self.cluster.allocate(conf.pool, network_of(config), req.container_id, req.ifname,
                                                 req.args, req.netns)
            return self.result(allocs, spec, conf)
        pool, spec, conf = self.resolve(config)
        allocs = self.store.allocate(pool, spec, req.container_id, req.ifname, requested_ips(req),
                                     network=network_of(config))
        return self.result(allocs, spec, conf)

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
