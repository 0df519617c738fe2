"""Ports for servers that bind a little after the port is chosen."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_CHOSEN_PORTS = range(20_000, 30_000)
_chosen: set[int] = set()


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server that will bind it a little later.

    Taken from 20000-29999, below the kernel's ephemeral range (32768-60999 on Linux): a
    port chosen in that range can be taken, between the choice and the server's bind, by
    any process that binds port 0, and a starting Ray cluster starts many (its workers'
    gRPC servers; its autoscaler and dashboard also hold 44217 and 44227). The range is
    also clear of Ray Serve's own listeners (30000 and 40000 up). No port is handed out
    twice by one process, so two servers set up together never get the same one.
    """
    low = _ephemeral_low()
    candidates = [p for p in _CHOSEN_PORTS if p < low and p not in _chosen]
    for port in random.sample(candidates, min(len(candidates), 200)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _chosen.add(port)
        return port
    with socket.socket() as probe:  # nothing free below the ephemeral range: take one
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default; elsewhere the range starts higher still
