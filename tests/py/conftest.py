"""Which real peer each slow Python suite needs, as pytest markers.

`scripts/test.sh --slow` runs the quick suites with `-m "not <every peer>"`, then each
peer's block with `-m <peer>` once that peer is built and started (act, a control plane,
Keycloak, promtool and Prometheus, the real node). One table here says which suite needs
which peer; a new slow suite adds one line.
"""

from __future__ import annotations

import pytest

# marker -> the suites (module file names, or "file::test") that need that peer
PEERS = {
    "act": ("test_act.py",),
    "keycloak": ("test_keycloak_long_running.py",),
    "cluster": ("test_cluster.py", "test_broker.py", "test_helm.py::test_helm_cli"),
    "prometheus": ("test_monitoring.py",),
    "node": ("test_node.py",),
}
DESCRIPTIONS = {
    "act": "runs the action under nektos/act (scripts/act.sh build)",
    "keycloak": "needs the real Keycloak (scripts/keycloak.sh start)",
    "cluster": "needs a real kube-apiserver (scripts/cluster.sh start)",
    "prometheus": "needs promtool and Prometheus (scripts/prometheus.sh build) and a control plane",
    "node": "needs the real node (scripts/node.sh start; root)",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in DESCRIPTIONS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        file = item.path.name
        test = f"{file}::{item.originalname}"
        for marker, suites in PEERS.items():
            if file in suites or test in suites:
                item.add_marker(getattr(pytest.mark, marker))
