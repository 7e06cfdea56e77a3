"""Reconcile one job: its cached pods and Services -> creates, deletes, Service retargets, status.

One pass, level-triggered (the state in the cache decides, not the event that woke us):

1. parse + validate (``api.parse``); an invalid job gets ``Failed``/``InvalidSpec`` and nothing else;
2. wait while our own earlier writes are not in the cache yet (``Expectations``);
3. finished job: clean up per ``cleanPodPolicy``, delete the PodGroup, delete the job after its TTL;
   suspended job: delete its pods and Services, condition ``Suspended``;
4. ``activeDeadlineSeconds`` past ``status.startTime``: ``Failed``/``DeadlineExceeded``;
5. PodGroup (gang), then per replica type (framework order) and index: classify the pod, recreate
   failed pods the restart policy allows (counted against ``backoffLimit``), create missing pods
   (host mode: a fresh free port), create or retarget the Service;
6. success / failure / running from the pods, and one status write if anything changed.

Deletes carry a ``uid`` precondition, so a lagging cache never deletes a pod it has not seen.
"""

from __future__ import annotations

import concurrent.futures
import copy
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobs import admission, api, builder, ports, rails, status
from jobs.expectations import Expectations
from jobs.metrics import Metrics
from jobs.store import Store
from scheduler.live.binder import Events
from scheduler.live.kubeapi import KubeApi

JSON = dict[str, Any]
log = logging.getLogger("railnet.jobs.reconciler")
ASSUME_TTL = 60.0  # seconds a picked port counts as held before the cache shows its pod


@dataclass
class Options:
    port_range: ports.PortRange = field(default_factory=lambda: ports.PortRange(20000, 30000))
    gang_default: bool = False
    gang_scheduler: str = "railnet"
    create_delay: float = 0.0  # tests: slow every create down (SIGKILL mid-reconcile)
    create_parallelism: int = 16
    rail_networks: tuple[str, ...] = ()  # --rail-networks: for pods that request a rail resource
    rail_resources: tuple[str, ...] = rails.RAIL_RESOURCES  # --rail-resource


@dataclass
class ReplicaState:
    active: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0


class PortLedger:
    """Ports picked but not yet visible in the cache, so two passes never pick the same one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.assumed: dict[str, tuple[int, float]] = {}  # ns/pod -> (port, monotonic time)

    def pick(self, store: Store, span: ports.PortRange, pod_key: str, node: str | None, avoid: set[int]) -> int | None:
        with self.lock, store.lock:
            now = time.monotonic()
            held = Counter(store.port_holders)
            for key, (port, at) in list(self.assumed.items()):
                pod = store.pods.get(key)
                if now - at > ASSUME_TTL or (pod is not None and port in builder.declared_host_ports(pod["spec"])):
                    del self.assumed[key]
                else:
                    held[port] += 1
            for listening in store.listeners.values():  # each node's host listeners hold their ports
                for port in listening:
                    if span.low <= port <= span.high:
                        held[port] += 1
            node_held = set(store.node_ports.get(node, {})) | store.listeners.get(node, set()) if node else set()
            chosen = ports.pick(span, held, node_held, avoid)
            if chosen is not None:
                self.assumed[pod_key] = (chosen, now)
            return chosen

    def release(self, pod_key: str) -> None:
        with self.lock:
            self.assumed.pop(pod_key, None)


def _main_container_state(pod: JSON, container: str) -> JSON:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == container:
            return dict(cs)
    return {}


def _exit(pod: JSON, container: str) -> tuple[int | None, str]:
    cs = _main_container_state(pod, container)
    term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
    code = term.get("exitCode")
    why = (pod.get("status") or {}).get("reason") or term.get("reason") or ""
    return (int(code) if code is not None else None), str(why)


def pod_host_port(pod: JSON, fw: api.Framework) -> int | None:
    text = (pod["metadata"].get("annotations") or {}).get(builder.PORT_ANNOTATION)
    if text and text.isdigit():
        return int(text)
    for c in pod["spec"].get("containers") or []:
        if c.get("name") == fw.container:
            for p in c.get("ports") or []:
                if p.get("name") == fw.port_name and p.get("hostPort"):
                    return int(p["hostPort"])
    return None


class Reconciler:
    def __init__(self, kube: KubeApi, store: Store, expectations: Expectations, events: Events, metrics: Metrics,
                 options: Options, requeue_after: Callable[[str, float], None],
                 queue: admission.Admission | None = None) -> None:
        self.kube, self.store, self.expectations, self.events = kube, store, expectations, events
        self.metrics, self.options, self.requeue_after = metrics, options, requeue_after
        self.admission = queue  # --admission quota
        self._rv = threading.local()  # the job's resourceVersion as this worker's pass knows it (after its own patches)
        self.ports = PortLedger()
        self.podgroups: set[str] = set()  # job uids whose PodGroup exists
        self.cleaned: set[str] = set()  # finished job uids whose PodGroup was deleted
        # creates of one job run concurrently (like the anchors' parallel slow-start); shared by workers
        self.pool = concurrent.futures.ThreadPoolExecutor(options.create_parallelism, thread_name_prefix="create")

    # -- entry --------------------------------------------------------------------------------------------
    def reconcile(self, key: str) -> None:
        obj, pods, services = self.store.snapshot(key)
        self._rv.value = obj["metadata"].get("resourceVersion") if obj is not None else None
        if obj is None:
            self.expectations.delete(key)
            _, kind, namespace, name = api.split_key(key)
            self.events.forget(f"{kind}/{namespace}/{name}/")  # the dedupe memory of a deleted job
            if self.admission is not None:
                self.admission.kick_all()  # what it held in its quota is free
            return
        if obj["metadata"].get("deletionTimestamp"):
            return
        old = obj.get("status") or {}
        st: JSON = copy.deepcopy(old)
        try:
            job = api.parse(obj, self.options.port_range, self.options.gang_default)
        except api.JobSpecError as exc:
            self._invalid(obj, st, str(exc))
            return
        status.drop_condition(st, "Failed", "InvalidSpec")
        if not self.expectations.satisfied(key):
            self.metrics.inc("skipped")
            return
        try:
            self._pass(job, obj, st, pods, services)
        except _Stale:
            self.metrics.inc("stale")  # our cache is behind the job: its watch event brings it back
            return
        self._write_status(job, old, st)

    def _invalid(self, obj: JSON, st: JSON, message: str) -> None:
        meta = obj["metadata"]
        group = obj["apiVersion"].split("/")[0]
        failed = status.condition(st, "Failed")
        if failed is None or failed.get("reason") == "InvalidSpec":
            status.set_condition(st, "Failed", True, "InvalidSpec", message)
        if st != (obj.get("status") or {}):
            path = api.resource_path(group, api.FRAMEWORKS[obj["kind"]].plural, meta["namespace"], meta["name"])
            self.kube.call("PATCH", path + "/status", {"status": _merge(obj.get("status") or {}, st)},
                           "application/merge-patch+json")
            self.events.on_object(meta["namespace"], obj["apiVersion"], obj["kind"], meta["name"], meta["uid"],
                                  "InvalidSpec", message)
        log.info("invalid job", extra={"job": meta["name"], "why": message})

    # -- one pass -------------------------------------------------------------------------------------------
    def _pass(self, job: api.Job, obj: JSON, st: JSON, pods: dict[str, JSON], services: dict[str, JSON]) -> None:
        done = status.terminal(st)
        if done:
            self._finish(job, st, pods, services)
            return
        if self.admission is not None and self._held(job, obj, st):
            return
        if job.suspend:
            self._delete_all(job, pods, services, only_live=False)
            status.set_condition(st, "Suspended", True, status.reason(job, "Suspended"), "the job is suspended")
            status.set_condition(st, "Running", False, status.reason(job, "Suspended"), "the job is suspended")
            st.pop("startTime", None)
            st["replicaStatuses"] = {r: {"active": 0, "succeeded": 0, "failed": 0} for r in job.replicas}
            return
        if status.is_true(st, "Suspended"):
            status.set_condition(st, "Suspended", False, status.reason(job, "Resumed"), "the job is resumed")
        st.setdefault("startTime", status.now())
        if status.condition(st, "Created") is None:
            status.set_condition(st, "Created", True, status.reason(job, "Created"),
                                 f"{job.kind} {job.name} is created.")
        started = status.parse_time(st.get("startTime")) or time.time()
        if job.active_deadline_s is not None:
            left = started + job.active_deadline_s - time.time()
            if left <= 0:
                self._fail(job, st, "DeadlineExceeded",
                           f"{job.kind} {job.name} ran longer than activeDeadlineSeconds={job.active_deadline_s}")
                self._finish(job, st, pods, services)
                return
            self.requeue_after(job.key, left + 0.5)
        if job.gang:
            self._ensure_podgroup(job)
        self._replicas(job, st, pods, services)
        if status.terminal(st):
            self._finish(job, st, pods, self.store.snapshot(job.key)[2])

    # -- queue admission (admission.py) ----------------------------------------------------------------
    def _held(self, job: api.Job, obj: JSON, st: JSON) -> bool:
        """Is the job held in its quota's queue (nothing of it runs in this pass)?"""
        queue = self.admission
        assert queue is not None
        state = admission.state_of(obj)
        entry = queue.entry_of(job)
        governed = entry is not None and entry.quota is not None
        if state is None:
            if not governed or job.suspend:
                return False  # not queued, or suspended by its user: stays as the user has it
            if st.get("startTime"):  # it ran before admission was on: it keeps running
                self._patch_job(job, obj, {"metadata": {"annotations": {admission.STATE: admission.ADMITTED}}})
                return False
            assert entry is not None
            self._patch_job(job, obj, {**admission.suspend_patch(job.group, True),
                                       "metadata": {"annotations": {admission.STATE: admission.QUEUED}}})
            message = f"queued in quota {entry.quota}"
            status.set_condition(st, "Queuing", True, "JobEnqueued", message)
            self._event(job, "Enqueued", message, warning=False)
            return True
        if state == admission.QUEUED:
            outcome = queue.decide(job.key) if governed else admission.Outcome(True, "no quota governs it now")
            if outcome.admit:
                try:
                    self._patch_job(job, obj, {**admission.suspend_patch(job.group, False),
                                               "metadata": {"annotations": {admission.STATE: admission.ADMITTED}}})
                except Exception:
                    queue.forget(job.key)
                    raise
                status.set_condition(st, "Queuing", False, "JobAdmitted", outcome.message)
                self._event(job, "Admitted", outcome.message, warning=False)
                return True  # the next pass (our patch on the watch) runs it
            if not job.suspend:  # unsuspended while queued: the queue owns suspend until it admits
                self._patch_job(job, obj, admission.suspend_patch(job.group, True))
            status.set_condition(st, "Queuing", True, "JobEnqueued", outcome.message)
            if outcome.never:
                self._event(job, "Inadmissible", outcome.message, warning=True)
            self.requeue_after(job.key, admission.RECHECK_S)
            return True
        if state == admission.ADMITTED and job.suspend:  # its user suspended it: it leaves the queue
            self._patch_job(job, obj, {"metadata": {"annotations": {admission.STATE: None}}})
            queue.kick_all()
        return False

    def _patch_job(self, job: api.Job, obj: JSON | None, patch: JSON) -> None:
        """A merge patch of the job, guarded by the resourceVersion this pass read or last wrote (409: the
        pass ends; the watch event that made the copy old runs it again)."""
        path = api.resource_path(job.group, job.framework.plural, job.namespace, job.name)
        rv = getattr(self._rv, "value", None) or (obj or {}).get("metadata", {}).get("resourceVersion")
        body = {**patch, "metadata": {**patch.get("metadata", {}), **({"resourceVersion": rv} if rv else {})}}
        code, answer = self.kube.request("PATCH", path, body, "application/merge-patch+json")
        if code == 409:
            raise _Stale(job.key)
        if code != 200:
            raise RuntimeError(f"patch {job.key}: HTTP {code}: {answer}")
        self._rv.value = answer["metadata"]["resourceVersion"]

    def _replicas(self, job: api.Job, st: JSON, pods: dict[str, JSON], services: dict[str, JSON]) -> None:
        fw = job.framework
        counts: dict[str, ReplicaState] = {}
        prior = st.get("replicaStatuses") or {}
        restarts = {r: int((prior.get(r) or {}).get("restarts") or 0) for r in job.replicas}
        failure: str | None = None
        restarting: list[str] = []  # replicas recreated by fail-over in this pass
        failing: list[tuple[JSON, str]] = []  # (failed pod, event text), deleted after the job is stamped
        pending_create = False
        missing: list[tuple[api.Replica, int]] = []
        in_place = 0
        for r in job.replicas.values():
            rs = counts[r.rtype] = ReplicaState()
            wanted = {job.pod_name(r.rtype, i) for i in range(r.replicas)}
            prefix = f"{job.name}-{r.lower}-"
            for name, extra in pods.items():  # scale-in: a pod of this type past the replica count
                if name not in wanted and name.startswith(prefix) and name[len(prefix):].isdigit():
                    self._delete(job, "Pod", extra)
                    if name in services:
                        self._delete(job, "Service", services[name])
            for i in range(r.replicas):
                name = job.pod_name(r.rtype, i)
                pod: JSON | None = pods.get(name)
                port: int | None = None
                if pod is not None and pod["metadata"].get("deletionTimestamp"):
                    continue  # terminating: its successor comes after it is gone (same name)
                if pod is not None:
                    phase = (pod.get("status") or {}).get("phase") or "Pending"
                    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                        if r.restart_policy in ("OnFailure", "Always"):
                            in_place += int(cs.get("restartCount") or 0)
                    if phase == "Succeeded":
                        rs.succeeded += 1
                    elif phase == "Failed":
                        code, why = _exit(pod, fw.container)
                        retry = r.restart_policy in ("OnFailure", "Always") or (
                            r.restart_policy == "ExitCode" and job.retryable(code, why))
                        if not retry:
                            rs.failed += 1
                            failure = failure or (f"{name} failed (exit code {code}{', ' + why if why else ''}); "
                                                  f"restartPolicy {r.restart_policy} does not retry it")
                            continue
                        if job.backoff_limit is not None and sum(restarts.values()) + in_place >= job.backoff_limit:
                            rs.failed += 1
                            failure = failure or (f"{name} failed (exit code {code}) and the job has restarted "
                                                  f"{sum(restarts.values()) + in_place} times: backoffLimit "
                                                  f"{job.backoff_limit} reached")
                            continue
                        failing.append((pod, f"recreating {name}: exit code {code} {why}".strip()))
                        restarts[r.rtype] += 1
                        restarting.append(name)
                        continue
                    else:
                        rs.active += 1
                        rs.running += phase == "Running"
                    port = pod_host_port(pod, fw) if job.host_network else None
                    self._ensure_service(job, r.rtype, i, port, services.get(name))
                else:
                    missing.append((r, i))
        # missing replicas: created concurrently (independent writes; ports are picked under a lock)
        if failing:  # stamped first, guarded: a stale pass stops here, before deleting anything
            self._stamp_failover(job)
            self._record_restarts(job, restarts)
            for pod, text in failing:
                self._delete(job, "Pod", pod)
                self.metrics.inc("failovers")
                self._event(job, "FailOver", text, warning=True)
        created = list(self.pool.map(lambda ri: self._create_replica(job, ri[0], ri[1], services), missing))
        for (r, _), ok in zip(missing, created, strict=True):
            counts[r.rtype].active += ok
            pending_create = pending_create or not ok
        worker0 = (pods.get(job.pod_name("Worker", 0)) or {}).get("status") or {}
        self._status(job, st, counts, restarts, failure, restarting, pending_create, in_place,
                     worker0.get("phase") == "Succeeded")

    def _status(self, job: api.Job, st: JSON, counts: dict[str, ReplicaState], restarts: dict[str, int],
                failure: str | None, restarting: list[str], pending_create: bool, in_place: int,
                worker0_done: bool) -> None:
        st["replicaStatuses"] = {
            r: {"active": c.active, "succeeded": c.succeeded, "failed": c.failed,
                **({"restarts": restarts[r]} if restarts[r] else {})} for r, c in counts.items()}
        if failure is None and job.backoff_limit is not None and in_place > job.backoff_limit:
            failure = f"containers restarted {in_place} times: backoffLimit {job.backoff_limit} exceeded"
        if failure is not None:
            self._fail(job, st, "BackoffLimitExceeded" if "backoffLimit" in failure else "Failed", failure)
            return
        if self._succeeded(job, counts, worker0_done):
            st["completionTime"] = status.now()
            status.set_condition(st, "Succeeded", True, status.reason(job, "Succeeded"),
                                 f"{job.kind} {job.name} successfully completed.")
            self._event(job, "Succeeded", f"{job.kind} {job.name} successfully completed.", warning=False)
            return
        if restarting:
            status.set_condition(st, "Restarting", True, status.reason(job, "Restarting"),
                                 f"{job.kind} {job.name} is restarting: recreating {', '.join(restarting)}.")
            return
        want = sum(r.replicas for r in job.replicas.values())
        up = sum(c.running + c.succeeded for c in counts.values())
        if not pending_create and want and up == want and any(c.running for c in counts.values()):
            status.set_condition(st, "Running", True, status.reason(job, "Running"),
                                 f"{job.kind} {job.name} is running.")

    def _succeeded(self, job: api.Job, counts: dict[str, ReplicaState], worker0_done: bool) -> bool:
        fw = job.framework
        master = next((t for t in fw.master_types if t in job.replicas), None)
        if master is not None:
            return counts[master].succeeded >= job.replicas[master].replicas > 0
        if "Worker" in job.replicas and job.replicas["Worker"].replicas:
            w = job.replicas["Worker"]
            if fw.kind == "TFJob" and job.success_policy != "AllWorkers":
                return worker0_done
            return counts["Worker"].succeeded >= w.replicas
        return all(counts[r].succeeded >= spec.replicas for r, spec in job.replicas.items()) and job.total > 0

    def _fail(self, job: api.Job, st: JSON, why: str, message: str) -> None:
        st["completionTime"] = status.now()
        status.set_condition(st, "Failed", True, why if why != "Failed" else status.reason(job, "Failed"), message)
        self._event(job, why, message, warning=True)

    # -- terminal and suspended jobs ----------------------------------------------------------------------
    def _finish(self, job: api.Job, st: JSON, pods: dict[str, JSON], services: dict[str, JSON]) -> None:
        policy = job.clean_pod_policy
        if policy != "None":
            self._delete_all(job, pods, services, only_live=policy == "Running")
        if job.gang and job.uid not in self.cleaned:
            path = f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{job.namespace}/podgroups/{job.name}"
            self.kube.request("DELETE", path)
            self.cleaned.add(job.uid)
        for r in st.get("replicaStatuses") or {}:
            st["replicaStatuses"][r]["active"] = 0 if policy != "None" else st["replicaStatuses"][r].get("active", 0)
        if job.ttl_s is not None:
            finished = status.parse_time(st.get("completionTime")) or time.time()
            left = finished + job.ttl_s - time.time()
            if left <= 0:
                path = api.resource_path(job.group, job.framework.plural, job.namespace, job.name)
                self.kube.request("DELETE", path, {"kind": "DeleteOptions", "apiVersion": "v1",
                                                   "propagationPolicy": "Background"})
                self._event(job, "TTLExpired", f"deleted {ttl_text(job.ttl_s)} after it finished", warning=False)
            else:
                self.requeue_after(job.key, left + 0.2)

    def _delete_all(self, job: api.Job, pods: dict[str, JSON], services: dict[str, JSON], only_live: bool) -> None:
        for name, pod in pods.items():
            if pod["metadata"].get("deletionTimestamp"):
                continue
            if only_live and (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            self._delete(job, "Pod", pod)
            if name in services:
                self._delete(job, "Service", services[name])
        if not only_live:
            for name, svc in services.items():
                if name not in pods:
                    self._delete(job, "Service", svc)

    # -- API writes ---------------------------------------------------------------------------------------
    def _create(self, job: api.Job, kind: str, body: JSON) -> bool:
        path = f"/api/v1/namespaces/{job.namespace}/{kind.lower()}s"
        item = f"add:{kind}/{job.namespace}/{body['metadata']['name']}"
        self.expectations.expect(job.key, item)
        if self.options.create_delay:
            time.sleep(self.options.create_delay)
        code, answer = self.kube.request("POST", path, body)
        if code == 201:
            self.metrics.inc("creates", kind=kind)
            return True
        if code == 409:  # it exists: the watch will show it (keep the expectation)
            self.metrics.inc("conflicts", kind=kind)
            return True
        self.expectations.lower(job.key, item)
        message = answer.get("message") if isinstance(answer, dict) else str(answer)
        log.warning("create failed", extra={"job": job.key, "kind": kind, "status": code, "error": message})
        self._event(job, f"FailedCreate{kind}", f"{body['metadata']['name']}: {message}", warning=True)
        raise api.JobSpecError(f"creating {kind} {body['metadata']['name']}: HTTP {code}: {message}") \
            if code == 422 else RuntimeError(f"create {kind}: HTTP {code}: {message}")

    def _delete(self, job: api.Job, kind: str, obj: JSON) -> None:
        meta = obj["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/{kind.lower()}s/{meta['name']}"
        item = "del:" + meta["uid"]
        self.expectations.expect(job.key, item)
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": meta["uid"]},
                "propagationPolicy": "Background"}
        code, _ = self.kube.request("DELETE", path, body)
        if code in (200, 202):
            self.metrics.inc("deletes", kind=kind)
        else:  # 404 (already gone) or 409 (another object by that name now): nothing to wait for
            self.expectations.lower(job.key, item)

    def _create_replica(self, job: api.Job, r: api.Replica, index: int, services: dict[str, JSON]) -> bool:
        """Pod, then its Service (host mode: targeting the new port); False if no port is free."""
        pod, port = self._create_pod(job, r, index)
        if pod is None:
            return False
        self._ensure_service(job, r.rtype, index, port, services.get(job.pod_name(r.rtype, index)))
        return True

    def _create_pod(self, job: api.Job, r: api.Replica, index: int) -> tuple[JSON | None, int | None]:
        name = job.pod_name(r.rtype, index)
        port: int | None = None
        if job.host_network:
            assert job.port_range is not None
            previous = self._previous_port(job, name)
            spec = r.template.get("spec") or {}
            node = spec.get("nodeName") or (spec.get("nodeSelector") or {}).get("kubernetes.io/hostname")
            port = self.ports.pick(self.store, job.port_range, f"{job.namespace}/{name}", node,
                                   {previous} if previous else set())
            if port is None:
                self._event(job, "NoFreeHostPort", f"{name}: every port of {job.port_range} is held on node "
                            f"{node}; widen the range ({api.PORT_RANGE_ANNOTATION})", warning=True)
                self.requeue_after(job.key, 5.0)
                return None, None
        body = builder.pod(job, r.rtype, index, port, self.options.gang_scheduler if job.gang else None)
        networks = job.rail_networks if job.rail_networks is not None else self.options.rail_networks
        skipped = rails.annotate(body, networks, self.options.rail_resources, self.options.gang_scheduler)
        if skipped:
            self._event(job, "RailNetworksSkipped", skipped, warning=True)
        try:
            self._create(job, "Pod", body)
        except Exception:
            self.ports.release(f"{job.namespace}/{name}")
            raise
        self._event(job, "SuccessfulCreatePod", f"Created pod: {name}" + (f" (host port {port})" if port else ""),
                    warning=False)
        return body, port

    def _previous_port(self, job: api.Job, name: str) -> int | None:
        svc = self.store.services.get(f"{job.namespace}/{name}")
        if svc is None:
            return None
        target = ((svc["spec"].get("ports") or [{}])[0]).get("targetPort")
        return int(target) if isinstance(target, int) else None

    def _ensure_service(self, job: api.Job, rtype: str, index: int, port: int | None, svc: JSON | None) -> None:
        if svc is None:
            self._create(job, "Service", builder.service(job, rtype, index, port))
            return
        if port is None:
            return
        ports_ = svc["spec"].get("ports") or []
        if ports_ and ports_[0].get("targetPort") == port:
            return
        meta = svc["metadata"]
        patch = {"metadata": {"resourceVersion": meta["resourceVersion"]},
                 "spec": {"ports": builder.service_ports(job, rtype, port)}}
        code, answer = self.kube.request("PATCH", f"/api/v1/namespaces/{job.namespace}/services/{meta['name']}",
                                         patch, "application/merge-patch+json")
        if code == 409:  # our cached Service is older than the server's (e.g. our own last retarget): its
            raise _Stale(job.key)  # watch event runs the pass again with the news; no warning for that
        if code != 200:
            raise RuntimeError(f"retarget Service {meta['name']}: HTTP {code}: {answer}")
        self._event(job, "ServiceRetargeted", f"{meta['name']} now targets host port {port}", warning=False)

    def _stamp_failover(self, job: api.Job) -> None:
        """KubeDL's ``kubedl.io/last-failover-timestamp`` (RFC 3339) on the job, just before its failed pods
        are deleted (KubeDL writes it just after; guarded like every job patch of a pass, so a pass on a
        stale copy deletes nothing and counts no restart twice)."""
        self._patch_job(job, None, {"metadata": {"annotations": {api.LAST_FAILOVER: status.now()}}})

    def _record_restarts(self, job: api.Job, restarts: dict[str, int]) -> None:
        """The new restart counts go into the job's status before the failed pods are deleted: a pass that
        failed after the delete would lose them otherwise (the next pass no longer sees the failed pod).
        Guarded by the resourceVersion the stamp left, like every write of a pass."""
        path = api.resource_path(job.group, job.framework.plural, job.namespace, job.name) + "/status"
        body: JSON = {"status": {"replicaStatuses": {r: {"restarts": n} for r, n in restarts.items() if n}}}
        rv = getattr(self._rv, "value", None)
        if rv:
            body["metadata"] = {"resourceVersion": rv}
        code, answer = self.kube.request("PATCH", path, body, "application/merge-patch+json")
        if code == 409:
            raise _Stale(job.key)
        if code != 200:
            raise RuntimeError(f"restarts of {job.key}: HTTP {code}: {answer}")
        self._rv.value = answer["metadata"]["resourceVersion"]

    def _ensure_podgroup(self, job: api.Job) -> None:
        if job.uid in self.podgroups:
            return
        path = f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{job.namespace}/podgroups"
        code, answer = self.kube.request("POST", path, builder.podgroup(job))
        if code == 201:
            self.metrics.inc("creates", kind="PodGroup")
        elif code != 409:
            raise RuntimeError(f"create PodGroup {job.name}: HTTP {code}: {answer}")
        self.podgroups.add(job.uid)

    def _write_status(self, job: api.Job, old: JSON, st: JSON) -> None:
        """One merge patch of ``status``, guarded by the resourceVersion the pass read: conditions are a
        list that a merge patch replaces whole, so a pass on a cache older than the last status write
        (e.g. woken by our own spec patch before our status write arrived) must not write it back."""
        if st == old:
            return
        path = api.resource_path(job.group, job.framework.plural, job.namespace, job.name) + "/status"
        body: JSON = {"status": _merge(old, st)}
        rv = getattr(self._rv, "value", None)
        if rv:
            body["metadata"] = {"resourceVersion": rv}
        code, answer = self.kube.request("PATCH", path, body, "application/merge-patch+json")
        if code == 404:
            return
        if code == 409:  # the job changed since our copy: its watch event brings it back with the news
            self.metrics.inc("stale")
            return
        if code != 200:
            raise RuntimeError(f"status of {job.key}: HTTP {code}: {answer}")
        if self.admission is not None and status.terminal(st) and not status.terminal(old):
            self.admission.kick_all()  # a finished job holds no quota

    def _event(self, job: api.Job, why: str, message: str, warning: bool) -> None:
        self.events.on_object(job.namespace, f"{job.group}/{api.VERSIONS[job.group]}", job.kind, job.name, job.uid,
                              why, message, warning=warning)


class _Stale(Exception):
    """The job (or one of its Services) changed since the cache's copy this pass acted on: a
    resourceVersion-guarded write got 409."""


def _merge(old: JSON, new: JSON) -> JSON:
    """A merge patch from ``old`` to ``new`` (top-level keys that went away become null)."""
    return {**{k: None for k in old if k not in new}, **new}


def ttl_text(seconds: int) -> str:
    return f"{seconds}s"
