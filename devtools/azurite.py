"""Start a private Azurite (blob + queue) on free loopback ports, for tests, the demo and benchmarks.

Always with ``--skipApiVersionCheck`` (the SDK speaks a newer API than Azurite) and
``--disableTelemetry`` (no phoning home). Three accounts: the customer's destination,
a stand-in for SmartDocumentor's export storage, and Azurite's well-known dev account
as the Functions host storage (queues).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from devtools.ports import describe_busy, port_is_busy

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = ROOT / "node_modules" / ".bin" / "azurite"

DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CUSTOMER_ACCOUNT = "customer"
CUSTOMER_KEY = base64.b64encode(b"customer-account-key-for-local-tests-only!").decode()
EXPORTS_ACCOUNT = "exports"
EXPORTS_KEY = base64.b64encode(b"exports-account-key-for-local-tests-only!!").decode()
EXPORTS_CONTAINER = "anonymized-exports"  # where the demo, `make run` and `make share` publish exports


def stop_process(
    process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 10, group: bool = False
) -> None:
    """Ask a child to stop (SIGTERM, or SIGINT for hosts that expect Ctrl-C), then kill it if it lingers.

    ``group=True`` for a child started with ``start_new_session=True``: the signal goes to its whole
    process group, and whatever is left of the group once the child has exited is killed too.
    """

    def send(signal_number: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(process.pid, signal_number)
            else:
                process.send_signal(signal_number)

    if process.poll() is None:
        send(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            process.wait()
    if group:
        send(signal.SIGKILL)  # grandchildren the child left behind (a no-op when there are none)


def die_with_parent() -> None:
    """``preexec_fn``: on Linux, the child gets SIGTERM when the process that started it dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class PortBusy(RuntimeError):
    """A port Azurite was told to use is taken; the message says by what, in one line."""


def free_port() -> int:
    """A loopback port nothing listens on, chosen below the kernel's ephemeral range when there is room:
    ports from that range (bind to port 0, every outgoing connection) may be handed to anyone else
    before the caller's server binds the port. Random from the system (a test's seeded ``random`` would
    hand every parallel worker the same ports)."""
    low = _ephemeral_low()
    if low - PORTS_BELOW_EPHEMERAL >= 1024:
        chooser = random.SystemRandom()
        for _ in range(50):
            port = chooser.randrange(low - PORTS_BELOW_EPHEMERAL, low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PORTS_BELOW_EPHEMERAL = 10_000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152  # the IANA dynamic range (macOS, Windows)


def connection_string(account: str, key: str, blob_port: int, queue_port: int | None = None) -> str:
    parts = [
        "DefaultEndpointsProtocol=http",
        f"AccountName={account}",
        f"AccountKey={key}",
        f"BlobEndpoint=http://127.0.0.1:{blob_port}/{account}",
    ]
    if queue_port is not None:
        parts.append(f"QueueEndpoint=http://127.0.0.1:{queue_port}/{account}")
    return ";".join(parts) + ";"


@dataclass
class Azurite:
    blob_port: int
    queue_port: int
    process: subprocess.Popen[bytes] | None = None
    workdir: str | None = None
    log_path: Path | None = field(default=None)

    @property
    def blob_host(self) -> str:
        return f"127.0.0.1:{self.blob_port}"

    @property
    def customer(self) -> str:
        return connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, self.blob_port)

    @property
    def exports(self) -> str:
        return connection_string(EXPORTS_ACCOUNT, EXPORTS_KEY, self.blob_port)

    @property
    def host_storage(self) -> str:
        return connection_string(DEV_ACCOUNT, DEV_KEY, self.blob_port, self.queue_port)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, group=True)  # started in a session of its own
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Azurite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_azurite(
    *,
    location: str | None = None,
    ports: tuple[int, int, int] | None = None,
    timeout: float = 60.0,
    tied_to_parent: bool = False,
) -> Azurite:
    """Start Azurite (on free ports unless ``ports`` names blob, queue, table) and wait until it answers.

    ``tied_to_parent``: Azurite stops when the calling process dies, however it dies (Linux); only for
    callers on the main thread (the tie is to the thread that started it).

    A free port can be taken by someone else (another test worker's Azurite, an outgoing connection)
    between choosing it and Azurite binding it; with ports of its own choosing, a start that loses
    that race is tried again on new ports.
    """
    if not AZURITE_BIN.exists():
        raise RuntimeError(f"{AZURITE_BIN} is missing: run `npm ci` (make install does it).")
    if ports is not None:
        busy = [port for port in ports if port_is_busy(port)]
        if busy:
            raise PortBusy(describe_busy(busy, role="azurite"))
        return _launch(ports, location=location, timeout=timeout, tied_to_parent=tied_to_parent)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return _launch(
                (free_port(), free_port(), free_port()),
                location=location,
                timeout=timeout,
                tied_to_parent=tied_to_parent,
            )
        except _PortTaken:
            if attempt == PORT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


PORT_ATTEMPTS = 5


class _PortTaken(RuntimeError):
    """Azurite exited because one of its ports was taken after it was chosen."""


def _launch(ports: tuple[int, int, int], *, location: str | None, timeout: float, tied_to_parent: bool) -> Azurite:
    blob_port, queue_port, table_port = ports
    workdir = None
    if location is None:
        workdir = tempfile.mkdtemp(prefix="azurite-")
    args = [
        str(AZURITE_BIN),
        "--silent",
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--loose",
        "--blobHost", "127.0.0.1", "--blobPort", str(blob_port),
        "--queueHost", "127.0.0.1", "--queuePort", str(queue_port),
        "--tableHost", "127.0.0.1", "--tablePort", str(table_port),
    ]  # fmt: skip
    if location is None:
        args += ["--inMemoryPersistence"]
    else:
        args += ["--location", location]
    env = dict(os.environ)
    env["AZURITE_ACCOUNTS"] = ";".join(
        f"{name}:{key}"
        for name, key in ((DEV_ACCOUNT, DEV_KEY), (CUSTOMER_ACCOUNT, CUSTOMER_KEY), (EXPORTS_ACCOUNT, EXPORTS_KEY))
    )
    log_dir = Path(location or workdir or tempfile.gettempdir())
    log_path = log_dir / "azurite.log"
    log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the child process
    process = subprocess.Popen(
        args,
        cwd=workdir or location,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent if tied_to_parent else None,
    )
    log_file.close()
    azurite = Azurite(blob_port, queue_port, process, workdir, log_path)

    def exited_early() -> RuntimeError:
        output = log_path.read_text(errors="replace")[-2000:]
        azurite.stop()
        kind = _PortTaken if "EADDRINUSE" in output else RuntimeError
        return kind(f"Azurite exited early:\n{output}")

    deadline = time.monotonic() + timeout
    for port in ports:  # Azurite exits if it cannot bind any of the three
        while True:
            if process.poll() is not None:
                raise exited_early()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    azurite.stop()
                    raise RuntimeError("Azurite did not start in time") from None
                time.sleep(0.1)
    if process.poll() is not None:  # something else answered on its ports
        raise exited_early()
    return azurite
