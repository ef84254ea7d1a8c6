"""The deployed package is function_app.py, receiver/, host.json and requirements.txt; nothing else."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pathspec

from receiver.verification import MAX_DEQUEUE_COUNT

ROOT = Path(__file__).resolve().parent.parent
DEPLOYED = {"function_app.py", "receiver", "host.json", "requirements.txt"}


def test_funcignore_leaves_only_the_app() -> None:
    git = shutil.which("git")
    assert git, "git is needed to list the tracked files"
    tracked = subprocess.run(
        [git, "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    ignore = pathspec.GitIgnoreSpec.from_lines((ROOT / ".funcignore").read_text().splitlines())
    shipped = {path.split("/", 1)[0] for path in tracked if not ignore.match_file(path) and path != ".funcignore"}
    assert shipped == DEPLOYED
    for local_only in ("node_modules/azurite/package.json", ".venv/bin/python", "local.settings.json"):
        assert ignore.match_file(local_only)


def test_host_json_pins_the_extension_bundle_and_queue_retries() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"}
    queues = host["extensions"]["queues"]
    minutes_between_tries = int(queues["visibilityTimeout"].split(":")[1])
    assert queues["maxDequeueCount"] * minutes_between_tries >= 30  # verification covers at least 30 minutes
    assert queues["maxDequeueCount"] == MAX_DEQUEUE_COUNT  # the verifier knows its last try
    # Telemetry: Microsoft's OpenTelemetry mode, and no sampling that could drop an ERROR record.
    assert host["telemetryMode"] == "OpenTelemetry"
    assert host["logging"]["applicationInsights"]["samplingSettings"]["isEnabled"] is False


def test_requirements_are_ranges_and_leave_out_the_worker() -> None:
    lines = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert lines
    for line in lines:
        assert ">=" in line and "<" in line, line
    assert not any(line.startswith("azure-functions-worker") for line in lines)


def test_the_python_versions_agree() -> None:
    """.python-version (deploy target), make test-all's interpreters, requires-python and the README."""
    match = re.search(r"^PYTHONS = (\[.*\])$", (ROOT / "noxfile.py").read_text(), flags=re.MULTILINE)
    assert match
    tested = json.loads(match.group(1))
    target = (ROOT / ".python-version").read_text().strip()
    assert target in tested
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == f">={tested[0]}"
    assert f"--runtime-version {target}" in (ROOT / "README.md").read_text()
    # azure-functions 2.x is the line for 3.13+: requirements.txt must say which line each Python gets.
    requirements = (ROOT / "requirements.txt").read_text()
    assert 'azure-functions>=2,<3; python_version >= "3.13"' in requirements


def test_the_exporter_floor_allows_entra_id_ingestion_only() -> None:
    """Application Insights takes Entra ID tokens only (infra: DisableLocalAuth); exporters before
    1.0.0b36 ignore APPLICATIONINSIGHTS_AUTHENTICATION_STRING, get 401 and drop every record."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    requirements = [
        Requirement(line.split("#")[0].strip())
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    [exporter] = [r for r in requirements if r.name == "azure-monitor-opentelemetry-exporter"]
    assert not exporter.specifier.contains(Version("1.0.0b35"), prereleases=True)
    assert exporter.specifier.contains(Version("1.0.0b36"), prereleases=True)
    assert exporter.specifier.contains(Version("1.0.0b58"), prereleases=True)  # the newest this project knows
    assert any(r.name == "azure-monitor-opentelemetry" for r in requirements)  # the distro that brings it
