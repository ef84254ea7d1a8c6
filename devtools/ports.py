"""Is a loopback port free, and if not, what probably holds it (for `make run`'s one-line message); and
which ports the running `make run` uses (its state file), so `make share` and `make ops-local` follow it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from pathlib import Path
from typing import Any

_CORE_TOOLS = re.compile(r"(^|/)func(\s|$)")
DATA = Path(__file__).resolve().parent.parent / ".azurite"  # `make run`'s Azurite data
STATE_FILE = "make-run.json"
DEFAULT_HOST_PORT = 7071
DEFAULT_AZURITE_PORTS = (10000, 10001, 10002)


def port_is_busy(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on ``host:port`` or the address cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        if probe.connect_ex((host, port)) == 0:
            return True
    return port_is_bound(port, host)


def port_is_bound(port: int, host: str = "127.0.0.1") -> bool:
    """True when ``host:port`` cannot be bound: someone listens there (found without connecting to it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR too: a connection in TIME_WAIT does not keep them from starting.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(inode)
    return inodes


def listener(port: int) -> tuple[int, str] | None:
    """The process (pid, command line) listening on ``port``, when this system tells (Linux /proc)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in targets:
                    command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    return int(entry.name), command.strip()
    return None


def _short(command: str, limit: int = 80) -> str:
    return command if len(command) <= limit else command[: limit - 3] + "..."


def describe_busy(ports: list[int], *, role: str) -> str:
    """One line: which ports are busy and what probably holds them. ``role`` is "azurite" or "host"."""
    shown = ", ".join(str(port) for port in ports)
    head = f"port {shown} is busy" if len(ports) == 1 else f"ports {shown} are busy"
    found = listener(ports[0])
    if found is not None:
        pid, command = found
        lowered = command.lower()
        if "azurite" in lowered:
            what = (
                f"an Azurite, pid {pid}, from another `make run` (still running, or left over): "
                f"stop that one, or `kill {pid}`"
            )
        elif "devtools.localhost" in lowered or _CORE_TOOLS.search(command):
            what = (
                f"a function host, pid {pid}, probably from an earlier `make run` or `func start`: "
                f"stop it with `kill {pid}`"
            )
        else:
            what = f"pid {pid}: {_short(command)}"
        return f"{head} ({what})"
    finder = f"`lsof -iTCP:{ports[0]} -sTCP:LISTEN`"
    if role == "azurite":
        return (
            f"{head} (probably an Azurite left from an earlier `make run` or started by VS Code's Azurite "
            f"extension: find it with {finder})"
        )
    return f"{head} (probably a function host from an earlier `make run` or `func start`: find it with {finder})"


def write_state(data: Path, *, port: int | None, azurite_ports: tuple[int, int, int], settings: Path) -> Path:
    """``<data>/make-run.json``: which ports this `make run` uses (read by `make share` and `make ops-local`)."""
    path = data / STATE_FILE
    state = {
        "pid": os.getpid(),
        "port": port,
        "azurite_ports": list(azurite_ports),
        "settings": str(settings.resolve()),
    }
    path.write_text(json.dumps(state) + "\n", encoding="utf-8")
    return path


def read_state(data: Path = DATA) -> dict[str, Any] | None:
    """The running `make run`'s ports, or None when none runs (its file is gone, or its process is)."""
    try:
        state = json.loads((data / STATE_FILE).read_text(encoding="utf-8"))
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if isinstance(state, dict) else None
