"""What Linux's /proc says about the servers under load and the machine (proc(5)).

Every function returns None where /proc is not there (other systems): the figures it
feeds are extras next to throughput and latency, which need nothing from it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

PROC = Path("/proc")
_TCP_ESTABLISHED = "01"


def available() -> bool:
    return (PROC / "self" / "stat").exists()


def _stat_fields(pid: str) -> list[str] | None:
    """Fields 3 onwards of /proc/<pid>/stat (after the command name, which may itself hold
    spaces or parentheses); None when the process has ended."""
    try:
        stat = (PROC / pid / "stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def _session_processes(session_id: int) -> Iterator[tuple[Path, list[str]]]:
    """(/proc/<pid>, stat fields from 3 on) of each live process of a session."""
    for entry in PROC.iterdir():
        fields = _stat_fields(entry.name) if entry.name.isdigit() else None
        if fields is not None and int(fields[3]) == session_id:  # field 6: the session id
            yield entry, fields


def session_cpu_seconds(session_id: int) -> float | None:
    """User + system CPU seconds of the live processes of a session (a server started with
    ``start_new_session``: its supervisor and workers)."""
    if not available():
        return None
    # fields 14 and 15: utime and stime, in clock ticks
    ticks = sum(int(f[11]) + int(f[12]) for _, f in _session_processes(session_id))
    return ticks / os.sysconf("SC_CLK_TCK")


def peer_ports_per_process(session_id: int, port: int) -> list[list[int]] | None:
    """For each process of the session holding established TCP connections to ``port``, the
    clients' ports of those connections: which worker the kernel gave each of the load
    generator's connections to. Processes holding none are left out."""
    if not available():
        return None
    peers: dict[str, int] = {}  # socket inode -> the client's port
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            columns = line.split()
            local_port = int(columns[1].rsplit(":", 1)[1], 16)
            if local_port == port and columns[3] == _TCP_ESTABLISHED:
                peers[columns[9]] = int(columns[2].rsplit(":", 1)[1], 16)
    held: list[list[int]] = []
    for entry, _ in _session_processes(session_id):
        ports = [peers[link[8:-1]] for link in _fd_links(entry) if link[8:-1] in peers]
        if ports:
            held.append(ports)
    return held


def _fd_links(process: Path) -> list[str]:
    """Where each open file descriptor of a process points (``socket:[inode]`` for
    sockets), skipping descriptors closed while we look."""
    try:
        fds = list((process / "fd").iterdir())
    except OSError:
        return []  # the process ended
    links = []
    for fd in fds:
        try:
            links.append(str(fd.readlink()))
        except OSError:
            continue
    return links


def machine_cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole machine since boot (busy excludes idle and
    iowait); the difference of two samples gives how busy every core was in between."""
    if not available():
        return None
    values = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return total - values[3] - values[4], total
