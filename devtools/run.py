"""`make run`: Azurite (data in .azurite/) plus the function app on http://127.0.0.1:7071/api/.

Uses `func start` when Azure Functions Core Tools is on PATH, otherwise the dev-only local
host (devtools/localhost.py). Creates local.settings.json from the example when missing, and
publishes the sample PDF behind the SAS URL requests.http sends.

A third child, the staging proxy (devtools/staging_proxy.py, on a free loopback port), stands in
front of Azurite for the destination only: DESTINATION_CONNECTION_STRING's BlobEndpoint is given to
the host pointing at it, so a file above SYNC_COPY_MAX_MIB is staged in blocks (Put Block From URL,
which Azurite lacks) and committed as in Azure. The sources and the host's queues go to Azurite.

Checks its ports before starting anything and says in one line which one is busy and what
probably holds it. Ctrl-C, SIGTERM and SIGHUP (a closed terminal) stop everything it started:
Azurite, the staging proxy and the host each run in a process group of their own and are stopped as groups; on
Linux they also stop when this process is killed outright.

Other ports (`make run PORT=7072 AZURITE_PORTS=10010,10011,10012`): the settings that point at Azurite's
default ports (UseDevelopmentStorage=true, 127.0.0.1:10000 and :10001 in local.settings.json) are given to
the host pointing at the chosen ones, as environment variables (they win over local.settings.json, in
`func start` too); the file is not changed. While it runs, `<data>/make-run.json` says which ports it uses,
so `make share` and `make ops-local` find them without being told.

    python -m devtools.run [--port 7071] [--azurite-ports 10000,10001,10002] [--data .azurite]
                           [--settings local.settings.json] [--host auto|func|local] [--debugpy]
                           [--azurite-only]   (`make azurite`: for VS Code's `func host start`)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from azure.core.exceptions import AzureError

from devtools.azurite import DEV_ACCOUNT, DEV_KEY, connection_string, die_with_parent, start_azurite, stop_process
from devtools.ports import describe_busy, port_is_bound, port_is_busy, write_state
from devtools.share import publish_sample
from devtools.staging_proxy import Child, start_child, through_proxy

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ROOT / "local.settings.json"
AZURITE_PORTS = (10000, 10001, 10002)  # what UseDevelopmentStorage=true and the example settings expect
DEBUGPY_PORT = 9091  # .vscode/launch.json attaches here
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopper:
    """Signal handler: remembers the first stop request; the main loop does the stopping."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self)


def say(text: str, *, error: bool = False) -> None:
    """Print, unless the terminal is gone (after SIGHUP a write fails: stopping matters more)."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=sys.stderr if error else sys.stdout, flush=True)


def _ports(text: str) -> tuple[int, int, int]:
    parts = [int(part) for part in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("give three ports: blob,queue,table")
    return parts[0], parts[1], parts[2]


# The app settings that name Azurite's endpoints (local.settings.json.example).
AZURITE_SETTINGS = ("AzureWebJobsStorage", "DESTINATION_CONNECTION_STRING", "ALLOWED_SOURCE_HOSTS")


def settings_values(path: Path) -> dict[str, str]:
    """local.settings.json's Values (empty when the file is missing or unreadable)."""
    try:
        values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(name): str(value) for name, value in values.items()} if isinstance(values, dict) else {}


def azurite_environment(
    values: Mapping[str, str], ports: tuple[int, int, int], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The Azurite settings moved to ``ports``: what to put in the host's environment. Only values that point
    at Azurite's default ports change (a real account's connection string is left alone); a variable
    already set in ``environ`` is the value the host would use, so it is the one moved."""
    if ports == AZURITE_PORTS:
        return {}
    environ = os.environ if environ is None else environ
    blob, queue, _ = ports
    moved = {}
    for name in AZURITE_SETTINGS:
        value = environ.get(name) or values.get(name)
        if not value:
            continue
        if value.strip().lower() == "usedevelopmentstorage=true":
            new = connection_string(DEV_ACCOUNT, DEV_KEY, blob, queue)
        else:
            new = value
            for host in ("127.0.0.1", "localhost"):
                new = new.replace(f"{host}:{AZURITE_PORTS[0]}", f"{host}:{blob}")
                new = new.replace(f"{host}:{AZURITE_PORTS[1]}", f"{host}:{queue}")
        if new != value:
            moved[name] = new
    return moved


def staging_environment(
    values: Mapping[str, str], env: Mapping[str, str], blob_port: int, proxy_port: int
) -> dict[str, str]:
    """DESTINATION_CONNECTION_STRING with its BlobEndpoint on Azurite moved to the staging proxy (the
    value the host would use: ``env`` first, then the settings file). Empty when it is not Azurite's."""
    value = env.get("DESTINATION_CONNECTION_STRING") or values.get("DESTINATION_CONNECTION_STRING")
    if not value:
        return {}
    if value.strip().lower() == "usedevelopmentstorage=true":
        value = connection_string(DEV_ACCOUNT, DEV_KEY, blob_port)
    moved = through_proxy(value, blob_port, proxy_port)
    return {"DESTINATION_CONNECTION_STRING": moved} if f":{proxy_port}/" in moved else {}


def host_command(
    kind: str,
    port: int,
    settings: Path,
    debugpy: bool,
    azurite_ports: tuple[int, int, int] = AZURITE_PORTS,
    staging_port: int | None = None,
) -> tuple[list[str], dict[str, str], str]:
    """The command that serves the app, its environment, and what to tell the developer."""
    env = dict(os.environ)
    values = settings_values(settings)
    env.update(azurite_environment(values, azurite_ports))
    if staging_port is not None:
        env.update(staging_environment(values, env, azurite_ports[0], staging_port))
    func_tool = shutil.which("func") if kind in ("auto", "func") else None
    if func_tool:
        if debugpy:
            env["languageWorkers__python__arguments"] = f"-m debugpy --listen 127.0.0.1:{DEBUGPY_PORT}"
        return [func_tool, "start", "--port", str(port)], env, "Serving with Azure Functions Core Tools (func start)"
    command = [sys.executable, "-m", "devtools.localhost", "--port", str(port), "--settings", str(settings)]
    if debugpy:
        command[1:1] = ["-m", "debugpy", "--listen", f"127.0.0.1:{DEBUGPY_PORT}"]
    note = "Core Tools not found: " if kind == "auto" else ""
    return command, env, f"{note}serving with the local host (devtools/localhost.py)"


def _free_near(port: int, *, avoid: set[int], count: int = 1) -> int:
    """The first port from ``port`` up where ``count`` ports in a row are free (and not in ``avoid``)."""
    candidate = port
    while any(port_is_busy(p) or p in avoid for p in range(candidate, candidate + count)) and candidate < 65000:
        candidate += 1
    return candidate


def preflight(args: argparse.Namespace) -> str | None:
    """Every expected reason not to start, as one line; None when all is well."""
    busy_azurite = [port for port in args.azurite_ports if port_is_busy(port)]
    busy_host = [] if args.azurite_only or not port_is_busy(args.port) else [args.port]
    if busy_azurite or busy_host:
        # Every busy port in one line, and one command that moves all that must move.
        parts = []
        if busy_azurite:
            parts.append(describe_busy(busy_azurite, role="azurite"))
        if busy_host:
            parts.append(describe_busy(busy_host, role="host"))
        options = []
        if busy_host:
            options.append(f"PORT={_free_near(args.port + 1, avoid=set(args.azurite_ports))}")
        if busy_azurite:
            start = _free_near(max(args.azurite_ports) + 8, avoid={args.port}, count=3)
            options.append(f"AZURITE_PORTS={start},{start + 1},{start + 2}")
        return "; ".join(parts) + f"; or run on other ports: `make run {' '.join(options)}`"
    if args.azurite_only:
        return None
    if args.debugpy:
        if port_is_busy(DEBUGPY_PORT):
            return describe_busy([DEBUGPY_PORT], role="host")
        if importlib.util.find_spec("debugpy") is None:
            return "debugpy is not installed in this environment: `.venv/bin/pip install debugpy`"
    if args.host == "func" and not shutil.which("func"):
        return "`func` (Azure Functions Core Tools) is not on PATH: install it, or use --host local"
    if args.host != "local" and shutil.which("func") and args.settings.resolve() != SETTINGS:
        return "`func start` reads local.settings.json only: --settings needs --host local"
    if not args.settings.exists() and args.settings.resolve() != SETTINGS:
        return f"{args.settings} does not exist"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=7071, help="the function app's HTTP port")
    parser.add_argument("--azurite-ports", type=_ports, default=AZURITE_PORTS, help="blob,queue,table")
    parser.add_argument("--data", type=Path, default=ROOT / ".azurite", help="Azurite's data folder")
    parser.add_argument("--settings", type=Path, default=SETTINGS, help="app settings (local host only)")
    parser.add_argument("--host", choices=("auto", "func", "local"), default="auto")
    parser.add_argument("--debugpy", action="store_true", help=f"let a debugger attach on port {DEBUGPY_PORT}")
    parser.add_argument("--azurite-only", action="store_true", help="Azurite and the sample only (make azurite)")
    args = parser.parse_args(argv)

    problem = preflight(args)
    if problem:
        say(f"make run: {problem}", error=True)
        return 1
    if not args.settings.exists():
        shutil.copyfile(ROOT / "local.settings.json.example", args.settings)
        say("Created local.settings.json from local.settings.json.example")
    args.data.mkdir(parents=True, exist_ok=True)

    stopper = Stopper()
    stopper.install()
    azurite = host = None
    staging: Child | None = None
    state: Path | None = None
    blob, queue, _ = args.azurite_ports
    try:
        try:
            azurite = start_azurite(location=str(args.data), ports=args.azurite_ports, tied_to_parent=True)
        except RuntimeError as error:
            first_line = str(error).splitlines()[0]
            say(f"make run: Azurite did not start ({first_line}); see {args.data / 'azurite.log'}", error=True)
            return 1
        say(f"Azurite: blob http://127.0.0.1:{blob}, queue http://127.0.0.1:{queue} (data in {args.data})")
        state = write_state(
            args.data,
            port=None if args.azurite_only else args.port,
            azurite_ports=args.azurite_ports,
            settings=args.settings,
        )
        moved = sorted(azurite_environment(settings_values(args.settings), args.azurite_ports))
        if moved:
            say(f"Not Azurite's default ports: {', '.join(moved)} given to the host for these ports.")
        try:
            publish_sample(blob)
        except AzureError as error:
            say(f"make run: could not publish requests.http's sample PDF ({type(error).__name__})", error=True)
        if args.azurite_only:
            say("Azurite only (for `func host start` or tests of your own); Ctrl-C stops it.")
            while stopper.signal is None and azurite.process is not None and azurite.process.poll() is None:
                time.sleep(0.2)
            return 0 if stopper.signal is not None else 1
        try:
            staging = start_child(blob, cwd=ROOT)
        except RuntimeError as error:
            say(f"make run: {error}", error=True)
            return 1
        say(f"Staging proxy: http://127.0.0.1:{staging.port} (the destination's blob endpoint; large files)")
        command, env, note = host_command(
            args.host, args.port, args.settings, args.debugpy, args.azurite_ports, staging.port
        )
        if stopper.signal is None:
            say(note)
            host = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches this process only; it stops the host's whole group
                preexec_fn=die_with_parent,
            )
            # requests.http names the default ports: on others it needs its first lines edited.
            shipped = args.port == 7071 and tuple(args.azurite_ports) == AZURITE_PORTS
            try_first = "Try requests.http" if shipped else "requests.http names 7071 and 10000 (edit its first lines)"
            say(
                f"Ctrl-C stops Azurite and the host. {try_first}, or in another terminal `make share FILE=...` "
                'or `make ops-local ARGS="find --task <taskId>"` (both find these ports by themselves).'
            )
            if args.debugpy:
                deadline = time.monotonic() + 90  # func start opens it only when its Python worker starts
                while not port_is_bound(DEBUGPY_PORT) and time.monotonic() < deadline:
                    if stopper.signal is not None or host.poll() is not None:
                        break
                    time.sleep(0.2)
                if port_is_bound(DEBUGPY_PORT):
                    say(f"A debugger can attach on 127.0.0.1:{DEBUGPY_PORT} (VS Code: 'Attach to make run').")
                else:
                    say(f"make run: nothing listens on {DEBUGPY_PORT} for a debugger yet", error=True)
        while stopper.signal is None and host is not None:
            code = host.poll()
            if code is not None:
                say(f"make run: the function host exited with code {code}", error=True)
                return code or 1
            time.sleep(0.2)
        return 0
    finally:
        if state is not None:
            state.unlink(missing_ok=True)
        if host is not None:
            stop_process(host, sig=signal.SIGINT, timeout=15, group=True)  # func start expects Ctrl-C
        if staging is not None:
            staging.stop()
        if azurite is not None:
            azurite.stop()
        say("Stopped Azurite and the function host." if host is not None else "Stopped Azurite.")


if __name__ == "__main__":
    sys.exit(main())
