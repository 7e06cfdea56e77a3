"""Pods and Services are created exactly once: under a watch that delivers events late, across a
controller SIGKILLed in the middle of a reconcile and restarted, and across a leader hand-over."""

from __future__ import annotations

import signal

from jobs import api
from tests.kube import kubeutil
from tests.kube.test_jobs_support import WAIT, Jobs, PodWatch, job_crds, jobs, replica, tfjob

__all__ = ["job_crds", "jobs"]  # fixtures


def watches(jobs: Jobs) -> tuple[PodWatch, PodWatch]:
    pods, services = PodWatch(jobs), PodWatch(jobs, "services")
    for w in (pods, services):
        w.start()
        assert w.ready.wait(10)
    return pods, services


def test_delayed_watch_never_creates_twice(jobs: Jobs) -> None:
    pods, services = watches(jobs)
    # every pod/Service event reaches the cache 0.5 s late, while the job's own status writes come
    # back at once: without expectations each of those passes would POST the replicas again
    ctl = jobs.start("--debug-watch-delay=0.5")
    jobs.create(tfjob("slow", PS=replica("tensorflow", 1), Worker=replica("tensorflow", 4)))
    names = {"slow-ps-0", *(f"slow-worker-{i}" for i in range(4))}
    jobs.wait_running(names)
    jobs.wait_condition("TFJob", "slow", "Running")
    assert dict(pods.added) == {n: 1 for n in names}
    assert dict(services.added) == {n: 1 for n in names}
    assert jobs.metric(ctl, 'railnet_jobs_creates_total{kind="Pod"}') == 5
    assert jobs.metric(ctl, "railnet_jobs_create_conflicts_total") == 0
    assert jobs.metric(ctl, "railnet_jobs_expectations_waits_total") > 0  # the guard did fire
    pods.stop.set()
    services.stop.set()


def test_sigkill_mid_reconcile_then_restart(jobs: Jobs) -> None:
    pods, services = watches(jobs)
    first = jobs.start("--debug-create-delay=0.4", "--create-parallelism=1")
    jobs.create(tfjob("crash", PS=replica("tensorflow", 1), Worker=replica("tensorflow", 9)))
    kubeutil.wait_for(lambda: len(jobs.pods("crash-")) >= 3 or None, WAIT, "3 pods created")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    made = len(jobs.pods("crash-")) + len(jobs.services("crash-"))
    assert made < 20, "the controller finished before it was killed; the test needs a slower create"
    second = jobs.start()
    names = {"crash-ps-0", *(f"crash-worker-{i}" for i in range(9))}
    jobs.wait_running(names)
    jobs.wait_condition("TFJob", "crash", "Running")
    assert set(jobs.pods("crash-")) == names and set(jobs.services("crash-")) == names
    assert dict(pods.added) == {n: 1 for n in names}, "a pod was created twice"
    assert dict(services.added) == {n: 1 for n in names}
    assert jobs.metric(second, "railnet_jobs_create_conflicts_total") == 0
    pods.stop.set()
    services.stop.set()


def test_leader_hand_over(jobs: Jobs) -> None:
    a = jobs.start()
    kubeutil.wait_for(lambda: jobs.metric(a, "railnet_jobs_leader") == 1 or None, WAIT, "a leads")
    b = jobs.start()
    jobs.create(tfjob("one", group=api.KUBEFLOW, Worker=replica("tensorflow", 2)))
    jobs.wait_running({"one-worker-0", "one-worker-1"})
    assert jobs.metric(b, "railnet_jobs_leader") == 0 and jobs.metric(b, "railnet_jobs_creates_total") == 0
    a.send_signal(signal.SIGKILL)
    a.wait(10)
    kubeutil.wait_for(lambda: jobs.metric(b, "railnet_jobs_leader") == 1 or None, WAIT, "b takes over")
    jobs.create(tfjob("two", group=api.KUBEFLOW, Worker=replica("tensorflow", 2)))
    jobs.wait_running({"two-worker-0", "two-worker-1"})
    jobs.wait_condition("TFJob", "two", "Running", group=api.KUBEFLOW)
    assert jobs.metric(b, 'railnet_jobs_creates_total{kind="Pod"}') == 2  # only job two's: one was done
