import socket

import pytest

from raysight import ports
from raysight.ports import free_loopback_port


def test_ports_are_free_below_the_ephemeral_range_and_never_handed_out_twice() -> None:
    ports = [free_loopback_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(20_000 <= port < 30_000 for port in ports)
    for port in ports[:5]:  # free now: a server can bind each
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_loopback_port()))
        held.listen()
        taken = held.getsockname()[1]
        # The only candidates: the held port and the one after it.
        monkeypatch.setattr(ports, "_CHOSEN_PORTS", range(taken, taken + 2))
        monkeypatch.setattr(ports, "_chosen", set())
        assert free_loopback_port() == taken + 1
