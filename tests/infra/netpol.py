"""A small evaluator of Kubernetes NetworkPolicy semantics, for checking the rendered policies flow by flow.

It follows the API's rules (networking.k8s.io/v1): a pod is isolated in a direction once any policy of
its namespace selects it for that direction; a connection is allowed when the source's egress and the
destination's ingress both allow it; peers are podSelector (the policy's namespace),
namespaceSelector (+ podSelector), or ipBlock (addresses outside the cluster). Ports are numbers
(optionally a range with endPort) and a protocol (TCP by default); named ports are refused, so the
evaluation never depends on container port names.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

NAMESPACE = "safedrift"


@dataclass(frozen=True)
class Endpoint:
    """A pod (labels + namespace) or, with ``ip`` and no labels, an address outside the cluster."""

    name: str
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    namespace: str | None = NAMESPACE
    ip: str | None = None

    @property
    def is_pod(self) -> bool:
        return self.ip is None


def outside(name: str, ip: str) -> Endpoint:
    return Endpoint(name, {}, None, ip)


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        ok = {
            "In": present and labels[key] in values,
            "NotIn": not present or labels[key] not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[op]
        if not ok:
            return False
    return True


def _peer_matches(peer: dict[str, Any], ep: Endpoint, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        if ep.ip is None:
            return False
        addr = ipaddress.ip_address(ep.ip)
        block = peer["ipBlock"]
        return addr in ipaddress.ip_network(block["cidr"]) and not any(
            addr in ipaddress.ip_network(x) for x in block.get("except", [])
        )
    if not ep.is_pod:
        return False
    if "namespaceSelector" in peer:
        ns_ok = selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": ep.namespace or ""})
    else:
        ns_ok = ep.namespace == policy_ns
    return ns_ok and selects(peer.get("podSelector"), ep.labels)


def _port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        number = p.get("port")
        if number is None:
            return True
        if not isinstance(number, int):
            raise AssertionError(f"named port {number!r} in a NetworkPolicy: use the number")
        if number <= port <= p.get("endPort", number):
            return True
    return False


def _types(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def _allowed(
    policies: list[dict[str, Any]], pod: Endpoint, peer: Endpoint, port: int, protocol: str, direction: str
) -> bool:
    if not pod.is_pod or pod.namespace != NAMESPACE:
        return True  # not governed by these policies
    selecting = [
        p for p in policies if selects(p["spec"].get("podSelector"), pod.labels) and direction in _types(p)
    ]
    if not selecting:
        return True  # not isolated in this direction
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in selecting:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(p, peer, NAMESPACE) for p in peers)) and _port_matches(
                rule.get("ports"), port, protocol
            ):
                return True
    return False


def can_connect(
    policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Whether ``src`` may open a connection to ``dst`` on ``port`` under ``policies`` (all in NAMESPACE)."""
    return _allowed(policies, src, dst, port, protocol, "Egress") and _allowed(
        policies, dst, src, port, protocol, "Ingress"
    )
