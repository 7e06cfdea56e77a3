"""The networks annotation for replica pods that ask for RoCE rails (jobs/rails.py), and its parsing
as a job annotation (jobs/api.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobs import api, builder, rails
from tests.unit.test_jobs_api import RANGE, load

names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
selections = st.builds(lambda ns, name, iface: f"{ns + '/' if ns else ''}{name}{'@' + iface if iface else ''}",
                       st.one_of(st.none(), names), names,
                       st.one_of(st.none(), st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True)))


@given(st.lists(selections, max_size=4))
def test_the_text_form_round_trips(entries: list[str]) -> None:
    assert rails.parse_networks(", ".join(entries)) == tuple(entries)
    assert rails.parse_networks(",".join(entries)) == tuple(entries)


@pytest.mark.parametrize("text", ["Rail", "rail@", "a/b/c", "rail@interface-name-too-long", "-rail", "ns/", "r ail"])
def test_a_bad_selection_says_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"\[namespace/\]name\[@interface\]"):
        rails.parse_networks(text)


def pod_spec(rdma: str | None = None, where: str = "limits", init: bool = False) -> dict[str, Any]:
    res = {where: {"rdma/roce": rdma, "nvidia.com/gpu": "4"}} if rdma else {}
    spec: dict[str, Any] = {"containers": [{"name": "tensorflow", "resources": res if not init else {}}]}
    if init:
        spec["initContainers"] = [{"name": "i", "resources": res}]
    return spec


def test_rails_are_counted_as_the_scheduler_counts_them() -> None:
    assert rails.rails_requested(pod_spec("4")) == 4  # limits only: request = limit
    assert rails.rails_requested(pod_spec("2", "requests")) == 2
    assert rails.rails_requested(pod_spec("2", init=True)) == 2  # init containers: the max
    assert rails.rails_requested(pod_spec()) == 0
    assert rails.rails_requested(pod_spec("2"), ["example.com/rail"]) == 0


def with_rails(scheduler: str | None = "railnet", **annotations: str) -> dict[str, Any]:
    pod = {"metadata": {"name": "j-worker-0", "annotations": dict(annotations)}, "spec": pod_spec("4")}
    if scheduler:
        pod["spec"]["schedulerName"] = scheduler
    return pod


def test_annotate_sets_the_networks_only_where_rails_are_asked_for() -> None:
    pod = with_rails()
    assert rails.annotate(pod, ("rail", "ml/rail2@roce"), scheduler_name="railnet") is None
    assert pod["metadata"]["annotations"][rails.NETWORKS] == "rail, ml/rail2@roce"
    plain = {"metadata": {"name": "ps-0"}, "spec": pod_spec()}
    assert rails.annotate(plain, ("rail",), scheduler_name="railnet") is None
    assert rails.NETWORKS not in plain["metadata"].get("annotations", {})
    off = with_rails()
    assert rails.annotate(off, (), scheduler_name="railnet") is None and not off["metadata"]["annotations"]


def test_the_users_own_selection_wins() -> None:
    pod = with_rails(**{rails.NETWORKS: "mine"})
    rails.annotate(pod, ("rail",), scheduler_name="railnet")
    assert pod["metadata"]["annotations"][rails.NETWORKS] == "mine"


def test_a_pod_another_scheduler_places_is_reported_not_annotated() -> None:
    pod = with_rails(scheduler=None)
    why = rails.annotate(pod, ("rail",), scheduler_name="railnet")
    assert why is not None and "not scheduled by railnet" in why and "gang-scheduling" in why
    assert rails.NETWORKS not in pod["metadata"]["annotations"]


def tfjob_with_rails(**annotations: str) -> dict[str, Any]:
    doc = load("kubedl-tfjob-mnist.yaml")
    doc["metadata"].setdefault("annotations", {}).update(annotations)
    worker = doc["spec"]["tfReplicaSpecs"]["Worker"]
    ps = copy.deepcopy(worker)
    ps["replicas"] = 1
    doc["spec"]["tfReplicaSpecs"]["PS"] = ps
    worker["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "8", "rdma/roce": "8"}}
    return doc


def test_job_annotation_parsed_and_validated() -> None:
    job = api.parse(tfjob_with_rails(**{rails.RAIL_NETWORKS: "rail, team/rail2"}), RANGE, True)
    assert job.rail_networks == ("rail", "team/rail2")
    assert api.parse(tfjob_with_rails(**{rails.RAIL_NETWORKS: ""}), RANGE, True).rail_networks == ()
    assert api.parse(tfjob_with_rails(), RANGE, True).rail_networks is None  # the controller's default applies
    with pytest.raises(api.JobSpecError, match=f"annotation {rails.RAIL_NETWORKS}: 'Rail_0' is not a"):
        api.parse(tfjob_with_rails(**{rails.RAIL_NETWORKS: "Rail_0"}), RANGE, True)


def test_worker_pods_with_rails_get_the_annotation_and_ps_pods_do_not() -> None:
    job = api.parse(tfjob_with_rails(), RANGE, True)
    worker = builder.pod(job, "Worker", 0, None, "railnet")
    ps = builder.pod(job, "PS", 0, None, "railnet")
    for pod in (worker, ps):
        assert rails.annotate(pod, ("rail",), scheduler_name="railnet") is None
    assert worker["metadata"]["annotations"][rails.NETWORKS] == "rail"
    assert rails.NETWORKS not in ps["metadata"]["annotations"]
