"""`watcher demo --port-base`: every port the demo opens comes from one range."""

from __future__ import annotations

import socket

from watcher.dev.demo import LOG_SERVERS, USUAL_PORTS, demo_ports


def test_a_port_base_gives_six_consecutive_ports_and_skips_a_taken_one() -> None:
    base = 18290
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 2))  # SMTP's port is busy
        ports = demo_ports(base)
    assert list(ports) == [*USUAL_PORTS, *LOG_SERVERS]
    assert ports["metrics"] == base
    assert ports["airflow"] == base + 1
    assert ports["smtp"] != base + 2  # replaced by a free one, not reused
    assert ports["prometheus"] == base + 3
    assert [ports[n] for n in LOG_SERVERS] == [base + 4, base + 5]


def test_port_base_zero_takes_any_free_ports() -> None:
    ports = demo_ports(0)
    assert len(set(ports.values())) == len(ports)
    assert all(p > 0 for p in ports.values())
