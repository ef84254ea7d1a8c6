"""`make run` (devtools.run) as real processes on free loopback ports and a temp data folder.

It checks its ports first and says in one line what holds a busy one; requests.http works
against it as shipped; Ctrl-C, SIGTERM, SIGHUP (and on Linux even SIGKILL) leave nothing running.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient

from devtools import share
from devtools.azurite import DEV_ACCOUNT, DEV_KEY, Azurite, connection_string, free_port
from devtools.local_ops import local_environment
from devtools.ports import port_is_busy, read_state
from devtools.sample_pdf import anonymized_pdf
from ops.cli import run as ops_run

from .conftest import Secrets

ROOT = Path(__file__).resolve().parent.parent
SETTING_NAMES = (
    "AzureWebJobsStorage",
    "DESTINATION_CONNECTION_STRING",
    "DESTINATION_ACCOUNT_URL",
    "DESTINATION_CONTAINER",
    "ALLOWED_SOURCE_HOSTS",
    "ALLOW_HTTP_SOURCES",
    "COPY_WAIT_SECONDS",
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through /proc")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(parent, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def clean_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in SETTING_NAMES}
    env["PATH"] = os.environ.get("PATH", "")
    return env


class MakeRun:
    """`python -m devtools.run` with its own ports, data folder and settings, in its own process group."""

    def __init__(
        self, tmp_path: Path, *extra: str, as_shipped: bool = False, values: dict[str, str] | None = None
    ) -> None:
        """``as_shipped``: local.settings.json as the example has it (Azurite's default ports), so `make run`
        must move its Azurite settings to this test's ports by itself. ``values``: more app settings."""
        self.blob, self.queue, self.table, self.port = (free_port() for _ in range(4))
        self.base = f"http://127.0.0.1:{self.port}/api"
        self.data = tmp_path / "azurite-data"
        settings = tmp_path / "local.settings.json"
        dev = connection_string(DEV_ACCOUNT, DEV_KEY, self.blob, self.queue)
        example = json.loads((ROOT / "local.settings.json.example").read_text())
        if not as_shipped:
            example["Values"].update(
                {
                    "AzureWebJobsStorage": dev,
                    "DESTINATION_CONNECTION_STRING": connection_string(DEV_ACCOUNT, DEV_KEY, self.blob),
                    "ALLOWED_SOURCE_HOSTS": f"127.0.0.1:{self.blob}",
                }
            )
        example["Values"].update(values or {})
        settings.write_text(json.dumps(example))
        self.log_path = tmp_path / "make-run.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "devtools.run", "--host", "local", "--port", str(self.port),
                    "--azurite-ports", f"{self.blob},{self.queue},{self.table}",
                    "--data", str(self.data), "--settings", str(settings), *extra,
                ],
                cwd=ROOT,
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's foreground group of its own
            )  # fmt: skip

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"make run exited early:\n{self.output()}"
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=5) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"make run did not serve in time:\n{self.output()}")

    def send(self, signal_number: int) -> None:
        os.killpg(self.process.pid, signal_number)  # what a terminal does to its foreground group

    def stop(self) -> None:
        if self.process.poll() is None:
            self.send(signal.SIGKILL)
            self.process.wait()
        for pid in processes_mentioning(str(self.data)):  # never leave a test's Azurite behind
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[MakeRun]:
    running = MakeRun(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def test_make_azurite_serves_the_sample_until_stopped(tmp_path: Path) -> None:
    azurite_only = MakeRun(tmp_path, "--azurite-only")
    try:
        deadline = time.monotonic() + 120
        while "Azurite only" not in azurite_only.output():
            assert azurite_only.process.poll() is None, azurite_only.output()
            assert time.monotonic() < deadline, azurite_only.output()
            time.sleep(0.1)
        shipped = next(
            line.split("=", 1)[1].strip()
            for line in (ROOT / "requests.http").read_text().splitlines()
            if line.startswith("@exportedFileUrl")
        )
        url = shipped.replace("127.0.0.1:10000", f"127.0.0.1:{azurite_only.blob}")
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
            assert response.read().startswith(b"%PDF-")
        assert not port_is_busy(azurite_only.port)  # no function host
        started = descendants(azurite_only.process.pid)
        azurite_only.send(signal.SIGTERM)
        assert azurite_only.process.wait(timeout=60) == 0
        assert not wait_gone(started, timeout=30)
        assert azurite_only.output().rstrip().endswith("Stopped Azurite.")
    finally:
        azurite_only.stop()


def wait_gone(pids: set[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


@pytest.mark.parametrize(
    "signal_number",
    [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL],
    ids=["ctrl-c", "sigterm", "sighup", "sigkill"],
)
def test_make_run_leaves_nothing_running(make_run: MakeRun, signal_number: int) -> None:
    make_run.wait_ready()
    started = descendants(make_run.process.pid)
    assert len(started) >= 3, "expected Azurite, the staging proxy and the function host"  # own process groups
    assert processes_mentioning(str(make_run.data)), "Azurite should be running on the test's data folder"
    proxies = set(processes_mentioning(f"--upstream\0{make_run.blob}"))
    assert proxies and proxies <= started, "the staging proxy should be running in front of this Azurite"

    make_run.send(signal_number)
    make_run.process.wait(timeout=60)

    left = wait_gone(started, timeout=30)
    assert not left, f"still running after {signal.Signals(signal_number).name}: {left}"
    assert not processes_mentioning(str(make_run.data)), "an Azurite outlived make run"
    assert not [pid for pid in proxies if alive(pid)], "a staging proxy outlived make run"
    if signal_number != signal.SIGKILL:  # SIGKILL: the children stop because their parent died
        assert make_run.process.returncode == 0
        assert "Stopped Azurite and the function host." in make_run.output()
    assert "Traceback" not in make_run.output()


def test_make_run_stages_a_file_above_sync_copy_max_mib(tmp_path: Path) -> None:
    """SYNC_COPY_MAX_MIB=1 and a 2 MiB file: the host stages it in blocks through the staging proxy (Azurite
    alone answers Put Block From URL with 501) and commits it, whether in the answer or by its queue."""
    running = MakeRun(tmp_path, values={"SYNC_COPY_MAX_MIB": "1", "COPY_WAIT_SECONDS": "10"})
    try:
        running.wait_ready()
        data = b"%PDF-1.4 large " + os.urandom(2 * 1024 * 1024)
        expiry = datetime.now(UTC) + timedelta(hours=2)
        url = share.publish(share.exports_client(running.blob), "large/scan.pdf", data, "application/pdf", expiry)
        payload = json.loads((ROOT / "devtools" / "sample-notification.json").read_text())
        payload.update({"exportedFileUrl": url, "exportedFileExpiresOn": expiry.isoformat(), "taskId": "large-1"})
        status, body = call(
            "POST",
            f"{running.base}/smartdocumentor/anonymization?code=local",
            {"Content-Type": "application/json"},
            json.dumps(payload),
        )
        assert status in (200, 202), body
        container, name = body["blob"].split("/", 1)
        destination = BlobServiceClient.from_connection_string(
            connection_string(DEV_ACCOUNT, DEV_KEY, running.blob)
        ).get_blob_client(container, name)
        deadline = time.monotonic() + 60
        while not destination.exists():  # 202: the local host's queue loop commits it
            assert time.monotonic() < deadline, running.output()
            time.sleep(0.1)
        assert destination.download_blob().readall() == data
        assert destination.get_blob_properties().blob_type == "BlockBlob"
    finally:
        running.stop()


def http_file_requests(text: str) -> tuple[list[tuple[str, str, str, dict[str, str], str]], dict[str, str]]:
    """requests.http as (title, method, url, headers, body) with its @variables filled in."""
    blocks = re.split(r"^###", text, flags=re.MULTILINE)
    variables = dict(re.findall(r"^@(\w+)\s*=\s*(.*?)\s*$", blocks[0], flags=re.MULTILINE))

    def fill(value: str) -> str:
        return re.sub(r"\{\{(\w+)\}\}", lambda match: fill(variables[match.group(1)]), value)

    found = []
    for block in blocks[1:]:
        title, *lines = block.splitlines()
        lines = [line for line in lines if not line.startswith("#")]
        while lines and not lines[0].strip():
            lines.pop(0)
        method, url = lines.pop(0).split(None, 1)
        headers = {}
        while lines and lines[0].strip():
            name, value = lines.pop(0).split(":", 1)
            headers[name.strip()] = fill(value.strip())
        found.append((title.strip(), method, fill(url.strip()), headers, fill("\n".join(lines).strip())))
    return found, variables


def call(method: str, url: str, headers: dict[str, str], body: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(  # noqa: S310 - loopback only
        url, data=body.encode() if body else None, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback only
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_requests_http_works_as_shipped_against_make_run(make_run: MakeRun, secrets: Secrets) -> None:
    text = (ROOT / "requests.http").read_text()
    # The same file, pointed at this test's ports instead of 7071 and 10000.
    text = text.replace("http://127.0.0.1:7071/api", make_run.base).replace(
        "127.0.0.1:10000", f"127.0.0.1:{make_run.blob}"
    )
    requests, variables = http_file_requests(text)
    secrets.add_url(variables["exportedFileUrl"])
    make_run.wait_ready()

    assert [title for title, *_ in requests][:2] == [
        "Health (200 ok)",
        "A stored PDF (200 stored; sent again, or after a restart of make run: 200 duplicate)",
    ]
    for title, method, url, headers, body in requests:
        expected = re.search(r"\((\d{3}) ([a-z-]+)", title)
        assert expected, f"say the expected answer in the title: {title}"
        status, answer = call(method, url, headers, body)
        assert status == int(expected.group(1)), (title, answer)
        assert expected.group(2) in (answer["status"], answer.get("error")), (title, answer)
    _, method, url, headers, body = requests[1]
    status, answer = call(method, url, headers, body)
    assert (status, answer["status"]) == (200, "duplicate")

    make_run.send(signal.SIGINT)
    make_run.process.wait(timeout=60)
    assert not secrets.leaks_in(make_run.output()), "a SAS signature reached make run's output"


def run_refused(*args: str) -> subprocess.CompletedProcess[str]:
    """devtools.run expected to refuse to start: returns at once, starts nothing."""
    return subprocess.run(
        [sys.executable, "-m", "devtools.run", "--host", "local", *args],
        cwd=ROOT,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_busy_azurite_port_is_one_line_naming_its_holder(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        result = run_refused(
            "--azurite-ports", f"{busy},{free_port()},{free_port()}", "--port", str(free_port()),
            "--data", str(tmp_path / "data"),
        )  # fmt: skip
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"make run: port {busy} is busy (pid {os.getpid()}: "), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # nothing started


def test_azurite_on_free_ports_tries_new_ports_when_one_is_taken_before_it_binds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another process (a parallel test worker) may take a port between choosing it and Azurite binding it."""
    from devtools import azurite as azurite_module

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        handed = iter([taken])
        chosen: list[int] = []

        def racing_free_port() -> int:
            port = next(handed, None) or free_port()
            chosen.append(port)
            return port

        monkeypatch.setattr(azurite_module, "free_port", racing_free_port)
        with azurite_module.start_azurite() as started:
            assert started.blob_port != taken
            service = BlobServiceClient.from_connection_string(started.customer)
            assert list(service.list_containers()) == []
    assert chosen[0] == taken and len(chosen) == 6  # one lost start, one on three new ports


def test_a_leftover_azurite_is_named_with_how_to_stop_it(azurite: Azurite, tmp_path: Path) -> None:
    result = run_refused(
        "--azurite-ports", f"{azurite.blob_port},{azurite.queue_port},{free_port()}", "--port", str(free_port()),
        "--data", str(tmp_path / "data"),
    )  # fmt: skip
    assert result.returncode == 1
    assert azurite.process is not None
    assert result.stderr.startswith(
        f"make run: ports {azurite.blob_port}, {azurite.queue_port} are busy (an Azurite, pid {azurite.process.pid}, "
        f"from another `make run` (still running, or left over): stop that one, or `kill {azurite.process.pid}`); "
        "or run on other ports: `make run AZURITE_PORTS="
    ), result.stderr
    suggested = [int(p) for p in result.stderr.split("AZURITE_PORTS=", 1)[1].split("`", 1)[0].split(",")]
    assert len(suggested) == 3 and suggested == list(range(suggested[0], suggested[0] + 3))
    assert not any(port_is_busy(port) for port in suggested)  # ports that are free now


def test_a_busy_host_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        result = run_refused(
            "--azurite-ports", f"{free_port()},{free_port()},{free_port()}", "--port", str(busy),
            "--data", str(tmp_path / "data"),
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(f"make run: port {busy} is busy ("), result.stderr
    assert "; or run on other ports: `make run PORT=" in result.stderr and "AZURITE" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_busy_host_and_azurite_ports_are_named_in_one_line_with_one_command(azurite: Azurite, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        result = run_refused(
            "--azurite-ports", f"{azurite.blob_port},{azurite.queue_port},{free_port()}", "--port", str(busy),
            "--data", str(tmp_path / "data"),
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert str(azurite.blob_port) in result.stderr and f"port {busy} is busy" in result.stderr
    command = result.stderr.split("`make run ", 1)[1].split("`", 1)[0]
    assert command.startswith("PORT=") and " AZURITE_PORTS=" in command, command


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("bash")), reason="runs the printed curl line")
def test_other_ports_carry_through_to_the_host_share_and_ops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make run PORT=... AZURITE_PORTS=...` with local.settings.json as shipped (10000, 10001): the host
    works on the chosen ports, and `make share` and `make ops-local` find them in make-run.json."""
    running = MakeRun(tmp_path, as_shipped=True)
    try:
        running.wait_ready()  # 200: the destination connection string was moved to this Azurite
        assert (
            "Not Azurite's default ports: ALLOWED_SOURCE_HOSTS, AzureWebJobsStorage, DESTINATION_CONNECTION_STRING"
            in (running.output())
        )
        state = read_state(running.data)
        assert state is not None
        assert (state["port"], state["azurite_ports"]) == (running.port, [running.blob, running.queue, running.table])

        # make share: its ports from the state file, and a curl line that works from another directory.
        monkeypatch.setattr(share, "read_state", lambda: state)
        file = tmp_path / "scan.pdf"
        file.write_bytes(anonymized_pdf())
        assert share.main([str(file), "--hours", "2", "--out", str(tmp_path / "out")]) == 0
        printed = capsys.readouterr().out
        (curl,) = [line.strip() for line in printed.splitlines() if line.strip().startswith("curl ")]
        assert f"127.0.0.1:{running.port}/api/" in curl and f"@{tmp_path / 'out'}/" in curl
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        sent = subprocess.run(
            [shutil.which("bash") or "bash", "-c", curl], cwd=elsewhere, capture_output=True, text=True, timeout=90
        )
        assert '"status": "stored"' in sent.stdout and sent.stdout.rstrip().endswith("HTTP 200"), sent.stdout

        # make ops-local: ops (here its smoke test) reaches the same storage and receiver.
        out = io.StringIO()
        code = asyncio.run(ops_run(["smoke", "--copy-wait", "10"], environ=local_environment(state), out=out))
        assert code == 0, out.getvalue()
        assert "ok    delivery" in out.getvalue()  # ALLOWED_SOURCE_HOSTS was moved to this Azurite too
        # ...and ops gets the app's own settings too, so a replay's dry run judges links as the app does.
        environment = local_environment(state)
        assert environment["ALLOWED_SOURCE_HOSTS"] == f"127.0.0.1:{running.blob}"
        assert environment["ALLOW_HTTP_SOURCES"].lower() == "true"
    finally:
        running.stop()
    assert read_state(running.data) is None  # killed outright: its file stays, but names a dead process


@pytest.mark.skipif(not shutil.which("make"), reason="reads the Makefile through make")
def test_make_demo_and_run_do_not_build_the_checkov_venv() -> None:
    """Only `make test` needs checkov (tests/test_infra.py): a newcomer's `make demo` must not wait for it."""
    make = shutil.which("make") or "make"
    for target in ("demo", "run", "share", "bench"):
        planned = subprocess.run(
            [make, "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
        ).stdout
        assert "requirements-dev.txt" in planned  # -B: every prerequisite, as on a fresh clone
        assert "checkov" not in planned, target
    assert (
        "checkov"
        in subprocess.run(
            [make, "-n", "-B", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
        ).stdout
    )


@pytest.mark.parametrize(
    ("args", "code", "hinted"),
    [(["pending"], 1, True), (["failed"], 1, True), (["pending"], 0, False), (["find"], 1, False)],
)
def test_ops_local_names_the_local_reconciliation_call_when_pending_or_failed_fail(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], code: int, hinted: bool
) -> None:
    """Locally the first reconciliation run may be minutes away: pending and failed then have no summary to
    read, and make ops-local names the call that runs one on make run's port."""
    import devtools.local_ops
    import ops.cli

    monkeypatch.setattr(devtools.local_ops, "read_state", lambda: {"port": 7099})
    monkeypatch.setattr(devtools.local_ops, "local_environment", lambda state: {})  # os.environ stays as it is
    monkeypatch.setattr(ops.cli, "main", lambda argv: code)
    assert devtools.local_ops.main(args) == code
    hint = "curl -X POST http://127.0.0.1:7099/admin/functions/reconcile_deliveries"
    assert (hint in capsys.readouterr().err) is hinted
