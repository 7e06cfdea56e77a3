"""`railnet`, the meta plugin: the pod's primary network (the cluster's own CNI, e.g. Calico; a
conflist from the node's CNI conf dir) and each secondary network the pod selects, all at once.

ADD: read the pod (by namespace/name, checked by UID) -> parse its selections -> resolve each to a
conflist (NAD) -> record the plan -> every network's ADD, one thread each (no delegate needs
another's interface) -> record the results -> write network-status back. Any failure deletes
everything added, primary included, and the error names the network and its delegate. DEL runs
the recorded plan with the recorded results, all at once too, so it works when the pod, the NAD or
the API server is gone. railnet's
own plugins run in-process (no exec, no second trip through the agent); others are exec'd.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import ConfigDict, Field, ValidationError

from cni.attachments import AttachmentStore
from cni.linux.netns import NetNS
from cni.meta import egress, routes
from cni.meta.claims import ClaimDevice, ClaimSource, claim_object_name, network_data, with_claim_device
from cni.meta.claims import device_info as claim_device_info
from cni.meta.devices import (
    RESOURCE_NAME_ANNOTATION,
    DeviceAssigner,
    DeviceSource,
    device_info,
    with_device_id,
)
from cni.meta.nad import from_conf_dir, from_nad
from cni.meta.selection import (
    DEFAULT_NETWORK_ANNOTATION,
    NETWORKS_ANNOTATION,
    NetworkSelection,
    parse_selections,
)
from cni.meta.status import NETWORK_STATUS_ANNOTATION, encode, pci_device_info, status_entry
from cni.spec import conflist
from cni.spec.errors import INTERFACE_EXISTS, INVALID_CONFIG, TRY_AGAIN_LATER, UNKNOWN_CONTAINER, CniError
from cni.spec.exec import PluginExec
from cni.spec.model import WireModel
from cni.spec.request import CniRequest, validate_ifname
from cni.spec.rollback import Rollback
from cni.spec.versions import canonical_result
from ipam.config import validation_error
from ipam.plugin import valid_attachments
from scheduler.live.allocation import PodAllocation
from scheduler.live.objects import ALLOCATION_ANNOTATION

log = logging.getLogger("railnet.meta")


class MetaConf(WireModel):
    model_config = ConfigDict(extra="allow")

    cni_version: str
    name: str
    type: str
    cluster_network: str  # a network name in conf_dir (the primary, e.g. Calico's conflist)
    default_networks: list[str] = Field(default_factory=list)  # attached to every pod, before its own
    conf_dir: Path = Path("/etc/cni/net.d")
    readiness_indicator_file: str | None = None
    namespace_isolation: bool = False
    global_namespaces: list[str] = Field(default_factory=list)
    system_namespaces: list[str] = Field(default_factory=lambda: ["kube-system"])


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str
    annotations: dict[str, str]
    # spec.resourceClaims[].name -> its ResourceClaim (None: generated from a template, not yet)
    claims: dict[str, str | None] = field(default_factory=dict)


def pod_claims(obj: dict[str, Any]) -> dict[str, str | None]:
    """A pod object's claim entries -> ResourceClaim names: `resourceClaimName`, or for a template the
    name kube-controller-manager generated (status.resourceClaimStatuses)."""
    generated = {s.get("name"): s.get("resourceClaimName")
                 for s in (obj.get("status") or {}).get("resourceClaimStatuses") or [] if isinstance(s, dict)}
    out: dict[str, str | None] = {}
    for entry in (obj.get("spec") or {}).get("resourceClaims") or []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            out[entry["name"]] = entry.get("resourceClaimName") or generated.get(entry["name"])
    return out


class PodSource(Protocol):
    """What the meta plugin reads from (and writes to) the cluster; the agent's caches implement it."""

    def pod(self, namespace: str, name: str, uid: str = "", fresh: bool = False) -> Pod | None:
        """The pod; `uid` is the one being set up (a cache holding another UID must ask again),
        `fresh` asks past any cache."""
        ...

    def nad(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The NAD's spec (None if absent), with its k8s.v1.cni.cncf.io/resourceName annotation, if
        any, under that key (annotation keys cannot clash with spec fields)."""
        ...

    def set_network_status(self, pod: Pod, value: str) -> None: ...


@dataclass
class Delegate:
    network: str  # "ns/name" for NADs, the conf name for the primary
    ifname: str
    conflist: dict[str, Any]
    default: bool
    gateways: list[str] | None = None  # the selection's default-route (None: not asked)
    device_info: dict[str, Any] | None = None  # for network-status (a NIC's PCI address, RDMA device)
    claim: ClaimDevice | None = None  # the DRA claim's NIC the interface is on (cni.meta.claims)


def parse_conf(config: dict[str, Any]) -> MetaConf:
    try:
        return MetaConf.model_validate(config)
    except ValidationError as exc:
        raise validation_error("railnet meta plugin config", exc) from None


def with_capabilities(plugins: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """libcni's rule: a plugin gets a capability argument only if it declares the capability."""
    if not runtime:
        return plugins
    out = dict(plugins)
    chain = []
    for plugin in plugins["plugins"]:
        caps = plugin.get("capabilities") or {}
        wanted = {k: v for k, v in runtime.items() if caps.get(k)}
        chain.append({**plugin, "runtimeConfig": {**plugin.get("runtimeConfig", {}), **wanted}} if wanted else plugin)
    out["plugins"] = chain
    return out


def rails_of(chain: dict[str, Any], sel: NetworkSelection,
             pod: Pod) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """`"rail": "auto"`: one interface per NIC the scheduler allocated to the pod, in rail order,
    each on its own parent NIC and, when the IPAM names a pool with `{rail}`, on that rail's pool.
    Interfaces are `<interface><rail>` when the selection names an interface, else `rail<rail>`."""
    text = pod.annotations.get(ALLOCATION_ANNOTATION)
    if not text:
        raise CniError(INVALID_CONFIG, f"network {sel.key} asks for rail: auto but the pod has no device allocation",
                       f"the pod needs the {ALLOCATION_ANNOTATION} annotation, written by the railnet scheduler "
                       "(schedulerName: railnet)")
    try:
        allocation = PodAllocation.from_annotation(text)
    except ValueError as exc:
        raise CniError(INVALID_CONFIG, f"the pod's {ALLOCATION_ANNOTATION} annotation is malformed", str(exc)) from None
    nics = {nic.index: nic for nic in allocation.nics}
    prefix = sel.interface if sel.interface and not sel.interface.startswith("net") else "rail"
    out = []
    for rail in allocation.rails:
        nic = nics.get(rail.nic)
        if nic is None or not (nic.name or nic.pci_address or nic.rdma_device):
            raise CniError(INVALID_CONFIG, f"rail {rail.rail} of the pod's allocation names no usable NIC",
                           "the node's NodeTopology must list the NIC's netdev, PCI address or RDMA device")
        first = {k: v for k, v in chain["plugins"][0].items() if k not in ("rail", "master", "pciAddress",
                                                                           "rdmaDevice")}
        # The netdev is what the agent's host namespace knows the NIC by; PCI and RDMA names go via sysfs.
        first.update({"master": nic.name} if nic.name else
                     {"pciAddress": nic.pci_address} if nic.pci_address else {"rdmaDevice": nic.rdma_device})
        ipam = first.get("ipam")
        if isinstance(ipam, dict) and isinstance(ipam.get("pool"), str):
            first["ipam"] = {**ipam, "pool": ipam["pool"].replace("{rail}", str(rail.rail))}
        ifname = f"{prefix}{rail.rail}"
        validate_ifname(ifname)
        info = pci_device_info(nic.pci_address, nic.rdma_device) if nic.pci_address else None
        out.append((ifname, {**chain, "plugins": [first, *chain["plugins"][1:]]}, info))
    if not out:
        raise CniError(INVALID_CONFIG, f"network {sel.key} asks for rail: auto but the pod's allocation has no rails",
                       "ask for GPUs and RDMA NICs together (nvidia.com/gpu and rdma/roce) so the scheduler pairs them")
    return out


def result_device_info(result: dict[str, Any], ifname: str) -> dict[str, Any] | None:
    """device-info from a delegate's own result: the interface's `pciID` (CNI spec, e.g. an SR-IOV VF)."""
    iface: dict[str, Any] = next((i for i in result.get("interfaces", []) if i.get("name") == ifname), {})
    pci = iface.get("pciID")
    return device_info(pci) if isinstance(pci, str) else None


class MetaPlugin:
    def __init__(self, attachments: AttachmentStore, source: PodSource | None, run: PluginExec,
                 devices: DeviceSource | None = None, claims: ClaimSource | None = None) -> None:
        self.attachments = attachments
        self.source = source
        self.run = run
        self.devices = devices
        self.claims = claims

    # ---- planning ---------------------------------------------------------------------------
    def _pod(self, req: CniRequest) -> Pod | None:
        namespace, name = req.args.get("K8S_POD_NAMESPACE", ""), req.args.get("K8S_POD_NAME", "")
        if not namespace or not name:
            return None  # not a Kubernetes pod: the primary network only
        if self.source is None:
            raise CniError(INVALID_CONFIG, "the railnet agent has no cluster access",
                           "run the agent with --kubeconfig so the meta plugin can read pods and NADs")
        uid = req.args.get("K8S_POD_UID", "")
        pod = self.source.pod(namespace, name, uid)
        if pod is None:
            raise CniError(UNKNOWN_CONTAINER, f"pod {namespace}/{name} does not exist")
        if uid and pod.uid != uid:
            raise CniError(UNKNOWN_CONTAINER, f"pod {namespace}/{name} is not the pod being set up",
                           f"the sandbox is for pod UID {uid}, the API has UID {pod.uid} (re-created pod)")
        return pod

    def _nad(self, sel: NetworkSelection) -> dict[str, Any]:
        assert self.source is not None and sel.namespace is not None
        spec = self.source.nad(sel.namespace, sel.name)
        if spec is None:
            raise CniError(INVALID_CONFIG, f"network {sel.key} not found",
                           f"no NetworkAttachmentDefinition {sel.name} in namespace {sel.namespace}")
        return spec

    def _claim_device(self, pod: Pod, sel: NetworkSelection) -> tuple[Pod, ClaimDevice]:
        """The NIC of the pod's claim the selection names (the pod re-read once when its cached copy
        does not know the claim's generated name yet)."""
        ref = sel.resource_claim
        assert ref is not None
        if self.claims is None:
            raise CniError(INVALID_CONFIG, f"network {sel.key} names resource claim {ref.claim_name!r}, but the "
                           "railnet agent is not this node's DRA driver",
                           "run the agent with --dra-driver (docs/dra.md)")
        if not pod.claims.get(ref.claim_name) and self.source is not None:
            pod = self.source.pod(pod.namespace, pod.name, pod.uid, fresh=True) or pod
        name = claim_object_name(pod.claims, f"{pod.namespace}/{pod.name}", ref)
        return pod, self.claims.device(pod.namespace, name, pod.uid, ref.request_name)

    def plan(self, req: CniRequest, conf: MetaConf, pod: Pod | None) -> list[Delegate]:
        annotations = pod.annotations if pod else {}
        primary_name = annotations.get(DEFAULT_NETWORK_ANNOTATION) or conf.cluster_network
        plan = [Delegate(primary_name, req.ifname, from_conf_dir(primary_name, conf.conf_dir), True)]
        if pod is None:
            return plan
        assigner = DeviceAssigner(self.devices, pod.namespace, pod.name)
        defaults = [] if pod.namespace in conf.system_namespaces else conf.default_networks
        text = ", ".join([*defaults, annotations.get(NETWORKS_ANNOTATION, "")]).strip(", ")
        for sel in parse_selections(text, pod.namespace, primary_ifname=req.ifname,
                                    isolation=conf.namespace_isolation,
                                    global_namespaces=tuple(conf.global_namespaces)):
            assert sel.interface is not None
            spec = self._nad(sel)
            chain = from_nad(sel.namespace or pod.namespace, sel.name, spec, conf.conf_dir)
            info, claim = None, None
            if sel.resource_claim is not None:  # the device is the claim's; a resourceName is not asked
                pod, claim = self._claim_device(pod, sel)
                info = claim_device_info(claim)
            elif sel.device_id:
                assigner.check_named(sel.key, sel.device_id)
                info = device_info(sel.device_id)
            elif isinstance(spec.get(RESOURCE_NAME_ANNOTATION), str):
                device = assigner.for_resource(sel.key, spec[RESOURCE_NAME_ANNOTATION])
                chain, info = with_device_id(chain, device), device_info(device)
            if sel.cni_args:
                chain = {**chain, "plugins": [{**p, "args": {"cni": sel.cni_args}} for p in chain["plugins"]]}
            chain = with_capabilities(chain, sel.runtime_config())
            if claim is not None:
                if chain["plugins"][0].get("rail") == "auto":
                    raise CniError(INVALID_CONFIG, f"network {sel.key} is rail: auto and names a resource claim",
                                   "rail: auto takes the NICs of the railnet.io/allocation annotation; a claim "
                                   "network takes the claim's NIC: use a NAD without rail: auto")
                chain = with_claim_device(chain, claim, sel.key)
                plan.append(Delegate(sel.key, sel.interface, chain, False, sel.default_route, info, claim))
            elif chain["plugins"][0].get("rail") == "auto":
                if ALLOCATION_ANNOTATION not in pod.annotations and self.source is not None:
                    # a cached copy may predate the scheduler's write of the allocation: ask once more
                    pod = self.source.pod(pod.namespace, pod.name, pod.uid, fresh=True) or pod
                plan += [Delegate(sel.key, ifname, rail_chain, False, sel.default_route, rail_info)
                         for ifname, rail_chain, rail_info in rails_of(chain, sel, pod)]
            else:
                plan.append(Delegate(sel.key, sel.interface, chain, False, sel.default_route, info))
        names = [d.ifname for d in plan]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate:
            raise CniError(INVALID_CONFIG, f"interface {duplicate} is used twice",
                           "a rail: auto network names its interfaces <interface><rail>; rename the other one")
        routes.check_requests([(d.network, d.gateways) for d in plan])
        return plan

    # ---- ADD ------------------------------------------------------------------------------------
    def add(self, req: CniRequest) -> dict[str, Any]:
        conf = parse_conf(req.config)
        if conf.readiness_indicator_file and not os.path.exists(conf.readiness_indicator_file):
            raise CniError(TRY_AGAIN_LATER, "the primary network is not ready",
                           f"waiting for {conf.readiness_indicator_file}")
        pod = self._pod(req)
        plan = self.plan(req, conf, pod)
        record = {"delegates": [{"network": d.network, "ifname": d.ifname, "conflist": d.conflist,
                                 "default": d.default, "gateways": d.gateways,
                                 "claim": asdict(d.claim) if d.claim else None} for d in plan]}
        if not self.attachments.begin(req.container_id, req.ifname, conf.name, req.netns, record):
            raise CniError(INTERFACE_EXISTS, f"attachment {req.container_id}/{req.ifname} already exists",
                           "DEL it before adding it again")
        results: list[dict[str, Any] | None] = [None] * len(plan)
        with Rollback(f"meta ADD {req.container_id}") as rollback:
            rollback.push("record", lambda: self.attachments.drop(req.container_id, req.ifname))
            rollback.push("delegates", lambda: self._delete(req, plan, results))
            # Every network at once, the primary included: no delegate needs another's interface,
            # and a failure anywhere deletes them all (the rollback above), primary included.
            if len(plan) == 1:
                results[0] = self._add_one(req, plan[0])
            else:
                with ThreadPoolExecutor(len(plan), thread_name_prefix="delegate") as pool:
                    futures = [pool.submit(self._add_one, req, d) for d in plan]
                    errors = []
                    for i, future in enumerate(futures):
                        try:
                            results[i] = future.result()
                        except CniError as exc:
                            errors.append(exc)
                if errors:
                    raise errors[0]
            self._default_route(req, plan, results)
            self.attachments.finish(req.container_id, req.ifname, {"results": results})
        if pod is not None and self.source is not None:
            self._write_status(pod, plan, results)
        self._write_network_data(plan, results)
        primary = results[0]
        assert primary is not None
        return canonical_result(primary)

    def _default_route(self, req: CniRequest, plan: list[Delegate], results: list[dict[str, Any] | None]) -> None:
        """`default-route`: move the pod's default route (per family) to the selected network, and
        edit the recorded results to match (CHECK then expects what the pod has)."""
        if all(d.gateways is None for d in plan):
            return
        choices = routes.choose([(d.network, d.ifname, d.gateways) for d in plan],
                                [canonical_result(r) if r is not None else {} for r in results])
        routes.apply(req.netns, [d.ifname for d in plan], choices)
        for choice in choices:  # `routes` has one shape in every result version this edits
            for i, result in enumerate(results):
                if result is not None:
                    results[i] = routes.edit_result(result, choice.family,
                                                    choice.gateway if i == choice.index else None)

    def _env(self, req: CniRequest, ifname: str) -> dict[str, str]:
        return {**req.env, "CNI_IFNAME": ifname}

    def _add_one(self, req: CniRequest, d: Delegate) -> dict[str, Any]:
        try:
            result = conflist.add(d.conflist, self._env(req, d.ifname), self.run)
            if d.claim is not None and d.claim.egress_bps:  # the claim's share of the NIC's bandwidth
                with NetNS(req.netns) as ns:
                    egress.limit(ns, d.ifname, d.claim.egress_bps)
            return result
        except CniError as exc:
            raise CniError(exc.code, f"network {d.network} ({d.ifname}): {exc.msg}", exc.details) from None

    def _write_network_data(self, plan: list[Delegate], results: list[dict[str, Any] | None]) -> None:
        """Each claim network's interface as its claim's status.devices[].networkData. The pod is
        networked already: a refusal is logged, not undone (the claim status is informational)."""
        for d, result in zip(plan, results, strict=True):
            if d.claim is None or result is None or self.claims is None:
                continue
            try:
                self.claims.set_network_data(d.claim, network_data(canonical_result(result), d.ifname))
            except Exception as exc:
                log.warning("could not write networkData of %s into ResourceClaim %s: %s", d.ifname, d.claim.claim,
                            exc)

    def _clear_network_data(self, plan: list[Delegate]) -> None:
        for d in plan:
            if d.claim is None or self.claims is None:
                continue
            try:
                self.claims.set_network_data(d.claim, None)
            except Exception as exc:  # DEL must finish: the claim usually goes with the pod anyway
                log.warning("could not clear networkData of %s in ResourceClaim %s: %s", d.ifname, d.claim.claim, exc)

    def _write_status(self, pod: Pod, plan: list[Delegate], results: list[dict[str, Any] | None]) -> None:
        entries = [status_entry(d.network, d.ifname, canonical_result(r), default=d.default,
                                device_info=d.device_info or result_device_info(canonical_result(r), d.ifname))
                   for d, r in zip(plan, results, strict=True) if r is not None]
        try:
            assert self.source is not None
            self.source.set_network_status(pod, encode(entries))
        except CniError as exc:  # the pod is networked: a stuck API server must not undo that
            log.warning("could not write %s on %s/%s: %s", NETWORK_STATUS_ANNOTATION, pod.namespace, pod.name, exc)

    # ---- DEL, CHECK, GC, STATUS -----------------------------------------------------------------
    def _delete(self, req: CniRequest, plan: list[Delegate], results: list[dict[str, Any] | None]) -> None:
        """Every planned delegate, each even if another failed, all at once: their interfaces are
        independent and DEL has no order to keep (a network's DEL never needs another network's
        interface); the first error in plan order is raised."""
        def one(pair: tuple[Delegate, dict[str, Any] | None]) -> CniError | None:
            d, result = pair
            try:
                conflist.delete(d.conflist, self._env(req, d.ifname), result, self.run)
            except CniError as exc:
                return exc
            return None

        pairs = list(zip(plan, results, strict=True))
        if len(pairs) > 1:
            with ThreadPoolExecutor(len(pairs), thread_name_prefix="delegate") as pool:
                errors = list(pool.map(one, pairs))
        else:
            errors = [one(p) for p in pairs]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def _recorded(self, req: CniRequest) -> tuple[list[Delegate], list[dict[str, Any] | None]] | None:
        record = self.attachments.get(req.container_id, req.ifname)
        if record is None:
            return None
        plan = [Delegate(d["network"], d["ifname"], d["conflist"], d["default"], d.get("gateways"),
                         claim=ClaimDevice(**d["claim"]) if d.get("claim") else None)
                for d in record.config["delegates"]]
        results = (record.result or {}).get("results") or [None] * len(plan)
        return plan, results

    def delete(self, req: CniRequest) -> None:
        recorded = self._recorded(req)
        if recorded is not None:
            self._delete(req, *recorded)
            self._clear_network_data(recorded[0])
        self.attachments.drop(req.container_id, req.ifname)

    def check(self, req: CniRequest) -> None:
        recorded = self._recorded(req)
        if recorded is None:
            raise CniError(INVALID_CONFIG, f"no attachment {req.container_id}/{req.ifname} is recorded")
        for d, result in zip(*recorded, strict=True):
            if result is not None:
                conflist.check(d.conflist, self._env(req, d.ifname), result, self.run)

    def gc(self, req: CniRequest) -> None:
        valid = valid_attachments(req.config)
        for record in self.attachments.of_network(req.network_name):
            if (record.container_id, record.ifname) not in valid:
                stale = CniRequest("DEL", record.container_id, record.netns, record.ifname, {}, req.path,
                                   {**req.env, "CNI_CONTAINERID": record.container_id, "CNI_NETNS": record.netns},
                                   req.config)
                self.delete(stale)

    def status(self, req: CniRequest) -> None:
        conf = parse_conf(req.config)
        if conf.readiness_indicator_file and not os.path.exists(conf.readiness_indicator_file):
            raise CniError(TRY_AGAIN_LATER, "the primary network is not ready",
                           f"waiting for {conf.readiness_indicator_file}")
