"""Required inter-pod affinity and anti-affinity, as kube-scheduler's InterPodAffinity filter.

Pure: pods come in as the JSON a watch delivers (``affinity_of``), existing pods as ``Placed``
records (namespace, labels, node index, their own terms), nodes as label maps by index. A node is
ruled out for an incoming pod when

* an **existing pod's** required anti-affinity term matches the incoming pod (its selector, and the
  incoming pod's namespace among the term's namespaces or namespaceSelector) and the node has the
  term's topologyKey with the same value as the existing pod's node;
* one of the pod's own **anti-affinity** terms matches an existing pod in the node's topology
  domain (a node without the topologyKey is not ruled out by that term);
* the pod's own **affinity** terms are not met: every term needs the node to have its topologyKey,
  and an existing pod that matches *all* terms in the same domain. A pod that no existing pod
  matches, and that matches all its own terms, may go to any node with the keys (the first pod of a
  group that has affinity to itself), as kube-scheduler allows.

A term's namespaces default to the pod's own; ``namespaceSelector: {}`` means all namespaces. A
nil labelSelector matches nothing, an empty one everything. ``matchLabelKeys`` /
``mismatchLabelKeys`` and the preferred (scoring) terms are not read.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Labels = Mapping[str, str]
REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
WHY_AFFINITY = "pod affinity"
WHY_ANTI = "pod anti-affinity"
WHY_EXISTING = "anti-affinity of placed pods"


@dataclass(frozen=True, slots=True)
class Selector:
    """A metav1.LabelSelector; ``nothing`` for a nil selector."""

    labels: tuple[tuple[str, str], ...] = ()
    exprs: tuple[tuple[str, str, frozenset[str]], ...] = ()
    nothing: bool = False

    def matches(self, labels: Labels) -> bool:
        if self.nothing:
            return False
        for key, value in self.labels:
            if labels.get(key) != value:
                return False
        for key, op, values in self.exprs:
            have = labels.get(key)
            if op == "In":
                ok = have is not None and have in values
            elif op == "NotIn":
                ok = have is None or have not in values
            elif op == "Exists":
                ok = have is not None
            elif op == "DoesNotExist":
                ok = have is None
            else:
                ok = False  # unknown operator: matches nothing (the API server rejects it anyway)
            if not ok:
                return False
        return True


def selector_of(obj: Mapping[str, Any] | None) -> Selector:
    if obj is None:
        return Selector(nothing=True)
    exprs = tuple((str(e.get("key", "")), str(e.get("operator", "")), frozenset(e.get("values") or ()))
                  for e in obj.get("matchExpressions") or [])
    return Selector(tuple(sorted((obj.get("matchLabels") or {}).items())), exprs)


@dataclass(frozen=True, slots=True)
class Term:
    selector: Selector
    namespaces: frozenset[str]
    ns_selector: Selector | None  # None: not given
    key: str  # topologyKey

    def matches(self, namespace: str, labels: Labels, ns_labels: Mapping[str, Labels]) -> bool:
        """Does a pod in ``namespace`` with ``labels`` match this term (kube's AffinityTerm.Matches)?"""
        if namespace in self.namespaces or (
                self.ns_selector is not None and self.ns_selector.matches(ns_labels.get(namespace) or {})):
            return self.selector.matches(labels)
        return False


@dataclass(frozen=True, slots=True)
class PodAffinity:
    """A pod's required terms; ``None`` stands for a pod with neither kind."""

    affinity: tuple[Term, ...] = ()
    anti: tuple[Term, ...] = ()


def _terms(items: Iterable[Mapping[str, Any]], namespace: str) -> tuple[Term, ...]:
    out = []
    for item in items:
        names = frozenset(item.get("namespaces") or ())
        raw_ns = item.get("namespaceSelector")
        ns_selector = selector_of(raw_ns) if raw_ns is not None else None
        if not names and ns_selector is None:
            names = frozenset((namespace,))
        out.append(Term(selector_of(item.get("labelSelector")), names, ns_selector, str(item.get("topologyKey") or "")))
    return tuple(out)


def affinity_of(pod: Mapping[str, Any]) -> PodAffinity | None:
    spec, meta = pod.get("spec") or {}, pod.get("metadata") or {}
    affinity = spec.get("affinity") or {}
    namespace = str(meta.get("namespace") or "")
    pos = _terms((affinity.get("podAffinity") or {}).get(REQUIRED) or [], namespace)
    neg = _terms((affinity.get("podAntiAffinity") or {}).get(REQUIRED) or [], namespace)
    return PodAffinity(pos, neg) if pos or neg else None


@dataclass(frozen=True, slots=True)
class Placed:
    """A pod that holds a node (bound, assumed, or placed earlier in the same transaction)."""

    namespace: str
    labels: Labels
    node: int
    terms: PodAffinity | None


@dataclass(frozen=True, slots=True)
class Incoming:
    namespace: str
    labels: Labels
    terms: PodAffinity | None


def excluded(pod: Incoming, existing: Sequence[Placed], nodes: Sequence[Labels],
             ns_labels: Mapping[str, Labels], skip: Container[int] = ()) -> tuple[set[int], dict[str, int]]:
    """Node indices ruled out for ``pod`` and how many per reason (WHY_*); ``nodes``: labels by index.

    Nodes in ``skip`` (already ruled out otherwise) are neither checked nor counted."""
    # existing pods' anti-affinity against the incoming pod: (key, value) pairs it may not join
    banned: set[tuple[str, str]] = set()
    for other in existing:
        if other.terms is None or not other.terms.anti:
            continue
        where = nodes[other.node]
        for term in other.terms.anti:
            value = where.get(term.key)
            if value is not None and term.matches(pod.namespace, pod.labels, ns_labels):
                banned.add((term.key, value))
    own_anti: set[tuple[str, str]] = set()
    counts: set[tuple[str, str]] = set()
    pos = pod.terms.affinity if pod.terms else ()
    neg = pod.terms.anti if pod.terms else ()
    if pos or neg:
        for other in existing:
            where = nodes[other.node]
            for term in neg:
                value = where.get(term.key)
                if value is not None and term.matches(other.namespace, other.labels, ns_labels):
                    own_anti.add((term.key, value))
            if pos and all(t.matches(other.namespace, other.labels, ns_labels) for t in pos):
                for term in pos:
                    value = where.get(term.key)
                    if value is not None:
                        counts.add((term.key, value))
    first_of_group = bool(pos) and not counts and all(t.matches(pod.namespace, pod.labels, ns_labels) for t in pos)
    out: set[int] = set()
    reasons: dict[str, int] = {}
    if not (banned or own_anti or pos):
        return out, reasons
    for index, labels in enumerate(nodes):
        if index in skip:
            continue
        why = None
        if banned and any(labels.get(k) == v for k, v in banned):
            why = WHY_EXISTING
        elif own_anti and any((t.key, labels.get(t.key)) in own_anti for t in neg):
            why = WHY_ANTI
        elif pos and (any(t.key not in labels for t in pos)
                      or not (first_of_group or all((t.key, labels[t.key]) in counts for t in pos))):
            why = WHY_AFFINITY
        if why is not None:
            out.add(index)
            reasons[why] = reasons.get(why, 0) + 1
    return out, reasons


def allowed(pod: Incoming, node: int, existing: Sequence[Placed], nodes: Sequence[Labels],
            ns_labels: Mapping[str, Labels]) -> bool:
    return node not in excluded(pod, existing, nodes, ns_labels)[0]
