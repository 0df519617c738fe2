"""The TCP sockets a process tree listens on, read from /proc (Linux)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    pid: int
    name: str
    """The process's title, e.g. `ray::ServeReplica:...` or `haproxy`."""

    @property
    def loopback(self) -> bool:
        address = ipaddress.ip_address(self.host)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback


def listeners(root: int) -> list[Listener]:
    """Every listening TCP socket held by `root` or any process it started."""
    pids = _tree(root)
    inodes = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state != _LISTEN or inode not in inodes:
                continue
            host_hex, port_hex = local.split(":")
            pid = inodes[inode]
            found.append(Listener(_host(host_hex, v6), int(port_hex, 16), pid, _title(pid)))
    return found


def _tree(root: int) -> set[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])  # the title may hold spaces
        parents.setdefault(ppid, []).append(int(entry))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(parents.get(pid, []))
    return tree


def _socket_inodes(pid: int) -> list[int]:
    inodes = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.append(int(target[8:-1]))
    except OSError:  # gone, or not ours
        pass
    return inodes


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "?"


def _host(hex_address: str, v6: bool) -> str:
    raw = bytes.fromhex(hex_address)
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words)) if v6 else str(ipaddress.IPv4Address(words))
