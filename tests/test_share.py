"""`make share` (devtools.share) against a real Azurite: its printed curl line really stores the file."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient

from devtools import share
from devtools.azurite import Azurite, free_port
from devtools.sample_pdf import anonymized_pdf

from .conftest import Secrets
from .test_localhost import Host


def wait_for_health(base: str, host: Host, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert host.process.poll() is None, "local host exited"
        try:
            with urllib.request.urlopen(f"{base}/api/health", timeout=5):  # noqa: S310 - loopback only
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise AssertionError("local host did not start")


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("bash")), reason="runs the printed curl line")
def test_share_prints_a_notification_and_a_curl_line_that_stores_the_file(
    azurite: Azurite,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    secrets: Secrets,
    container_name: str,
    destination: ContainerClient,
) -> None:
    data = anonymized_pdf("Relatório anual", ("Cliente: [REDACTED]",))
    file = tmp_path / "Relatório anual (final).pdf"
    file.write_bytes(data)
    host = Host(azurite, container_name, azurite.customer)
    try:
        wait_for_health(host.base, host)
        code = share.main(
            [str(file), "--blob-port", str(azurite.blob_port), "--receiver", host.base, "--out", str(tmp_path / "out")]
        )
        printed = capsys.readouterr().out
        assert code == 0
        (saved,) = (tmp_path / "out").glob("notification-*.json")
        body = json.loads(saved.read_text(encoding="utf-8"))
        secrets.add_url(body["exportedFileUrl"])  # the autouse check: no log line may carry it
        assert body["exportedFileContentType"] == "application/pdf"
        assert body["displayName"] == file.name
        assert f"@exportedFileUrl = {body['exportedFileUrl']}" in printed
        assert json.dumps(body, indent=2, ensure_ascii=False) in printed

        with urllib.request.urlopen(body["exportedFileUrl"], timeout=10) as response:  # noqa: S310 - loopback
            assert response.read() == data  # a real SAS on the file's bytes

        (curl,) = [line.strip() for line in printed.splitlines() if line.strip().startswith("curl ")]
        assert f"{host.base}/api/smartdocumentor/anonymization?code=" in curl
        bash = shutil.which("bash") or "bash"
        # From another directory than the repository's: the printed path is absolute.
        sent = subprocess.run([bash, "-c", curl], cwd=tmp_path, capture_output=True, text=True, timeout=90, check=True)
        answer_text, status_line = sent.stdout.rstrip().rsplit("\n", 1)
        answer = json.loads(answer_text)
        assert (status_line, answer["status"]) == ("HTTP 200", "stored"), sent.stdout
        name = answer["blob"].split("/", 1)[1]
        assert destination.get_blob_client(name).download_blob().readall() == data
    finally:
        logged = host.stop()
    assert not secrets.leaks_in(logged), "a SAS signature leaked into the local host's log"


def test_share_without_make_run_says_so_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "scan.pdf"
    file.write_bytes(anonymized_pdf())
    port = free_port()  # nothing listens there
    assert share.main([str(file), "--blob-port", str(port), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"make share: nothing answers on 127.0.0.1:{port} (Azurite): start `make run` in another terminal first, "
        "then run this again; the link works while that `make run` runs\n"
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([], 2, "make share: say which file, e.g. `make share FILE=scan.pdf`\n"),
        (["missing.pdf"], 1, "make share: missing.pdf is not a file: give one with FILE=path/to/scan.pdf\n"),
    ],
)
def test_share_explains_a_missing_file(
    args: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert share.main(args) == code
    assert capsys.readouterr().err == message


def test_the_sample_behind_requests_http_is_published_where_its_sas_points(azurite: Azurite) -> None:
    url = share.publish_sample(azurite.blob_port)
    shipped = next(
        line.split("=", 1)[1].strip()
        for line in (Path(share.ROOT) / "requests.http").read_text().splitlines()
        if line.startswith("@exportedFileUrl")
    )
    assert shipped.split("?")[0] == url.split("?")[0].replace(f":{azurite.blob_port}/", ":10000/")
    with urllib.request.urlopen(  # noqa: S310 - loopback only
        shipped.replace("127.0.0.1:10000", azurite.blob_host), timeout=10
    ) as response:
        assert response.read() == anonymized_pdf()
