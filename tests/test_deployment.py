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
    """.python-version (deploy target), make test-all's interpreters, requires-python and the deploy docs."""
    match = re.search(r"^PYTHONS = (\[.*\])$", (ROOT / "noxfile.py").read_text(), flags=re.MULTILINE)
    assert match
    tested = json.loads(match.group(1))
    target = (ROOT / ".python-version").read_text().strip()
    assert target in tested
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == f">={tested[0]}"
    assert f"--runtime-version {target}" in (ROOT / "docs" / "deploying.md").read_text()
    # azure-functions 2.x is the line for 3.13+: requirements.txt must say which line each Python gets.
    requirements = (ROOT / "requirements.txt").read_text()
    assert 'azure-functions>=2,<3; python_version >= "3.13"' in requirements


def test_the_exporter_floor_allows_entra_id_ingestion_only() -> None:
    """Application Insights takes Entra ID tokens only (infra: DisableLocalAuth); exporters before
    1.0.0b36 ignore APPLICATIONINSIGHTS_AUTHENTICATION_STRING, get 401 and drop every record. And the
    alert filters on customDimensions.logger_name, which exporters before 1.0.0b52 do not write
    (tests/test_queries.py; `make test-all` runs the queries on the floor itself)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    requirements = [
        Requirement(line.split("#")[0].strip())
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    [exporter] = [r for r in requirements if r.name == "azure-monitor-opentelemetry-exporter"]
    assert not exporter.specifier.contains(Version("1.0.0b51"), prereleases=True)
    assert exporter.specifier.contains(Version("1.0.0b52"), prereleases=True)
    assert exporter.specifier.contains(Version("1.0.0b58"), prereleases=True)  # the newest this project knows
    assert any(r.name == "azure-monitor-opentelemetry" for r in requirements)  # the distro that brings it


# ---- the README and docs/: links that resolve, a README that fits, the sample the curl line sends ----

MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "infra" / "VERIFY.md"]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens (an underscore
    inside a word is not emphasis in GitHub's Markdown: it stays, as in ``sync_copy_max_mib``)."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {github_anchor(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return [link for link in LINK.findall(text) if not re.match(r"[a-z]+:", link)]


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    checked = 0
    for page in MARKDOWN:
        for link in relative_links(page):
            target, _, anchor = link.partition("#")
            resolved = (page.parent / target).resolve() if target else page
            where = f"{page.relative_to(ROOT)}: {link}"
            assert resolved.exists(), f"{where}: no such file"
            assert ROOT in resolved.parents or resolved == ROOT, f"{where}: outside the repository"
            if anchor and resolved.suffix == ".md":
                assert anchor in anchors(resolved), f"{where}: no such heading"
            checked += 1
    assert checked > 50


def test_the_link_check_catches_a_missing_file_and_heading(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Tearing it down\n\n[a](missing.md) [b](#tearing-it-down) [c](https://x.y/z) ![d](e.png)\n")
    assert relative_links(page) == ["missing.md", "#tearing-it-down"]
    assert anchors(page) == {"tearing-it-down"}
    assert github_anchor("Smoke test: `python -m ops smoke`") == "smoke-test-python--m-ops-smoke"


def test_the_project_speaks_for_itself() -> None:
    """The README, docs/, infra/ and azure.yaml cite no file outside the repository and no issue or review."""
    outside = re.compile(r"\.\./shared|CONTRACT\.md|AZURE-NOTES|DESIGN\.md|\bissue #?\d+", re.I)
    # Reviews cited as sources; SmartDocumentor's "To Review" state and its review queue are its own words.
    cited_review = re.compile(r"\b(?:the|a|code|second|latest) review\b(?! queue)|\breview #?\d+|\breviewer", re.I)
    # docs/performance.md is generated by `make bench` (bench/run.py writes its words): not checked here.
    pages = [page for page in MARKDOWN if page.name != "performance.md"]
    pages += [ROOT / "azure.yaml", *sorted((ROOT / "infra").rglob("*.bicep"))]
    pages += sorted((ROOT / "infra").rglob("*.sh")) + sorted((ROOT / "infra").rglob("*.ps1"))
    for page in pages:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            match = outside.search(line) or cited_review.search(line)
            assert match is None, f"{page.relative_to(ROOT)}:{number}: {match.group(0)!r}"


def test_the_readme_fits_and_keeps_the_users_order() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    headings = re.findall(r"^## (.*)$", text, flags=re.MULTILINE)
    order = ["What it does", "Try it on your machine", "Set up SmartDocumentor", "Deploy", "Operate"]
    assert [heading for heading in headings if heading in order] == order
    assert "a few minutes" in text and "TODO" not in text
    for page in ("docs/roles.md", "docs/teardown.md", "docs/cost.md", "docs/deploying.md", "infra/VERIFY.md"):
        assert f"]({page})" in text, page


def test_the_curl_line_sends_the_sample_requests_http_sends() -> None:
    curl = (
        'curl -sS -X POST "http://localhost:7071/api/smartdocumentor/anonymization"'
        " -H 'Content-Type: application/json' --data @devtools/sample-notification.json"
    )
    assert curl in (ROOT / "README.md").read_text()
    http = (ROOT / "requests.http").read_text()
    assert f"# {curl}" in http.splitlines()
    sample = json.loads((ROOT / "devtools" / "sample-notification.json").read_text())
    url = re.search(r"^@exportedFileUrl\s*=\s*(\S+)", http, flags=re.MULTILINE)
    assert url
    # The body of requests.http's stored PDF, with its @exportedFileUrl: the one `make run` publishes.
    stored = http.split("###")[2]
    body = stored[stored.index("\n{\n") : stored.rindex("}") + 1].replace("{{exportedFileUrl}}", url.group(1))
    assert sample == json.loads(body)


def test_no_driver_outlives_driver_lifetime_by_host_json_function_timeout() -> None:
    """receiver.machine.DRIVER_LIFETIME bounds how long an older delivery's driver may still send a copy: it must
    cover host.json's functionTimeout (the host stops a function then) and a request's server timeout after it."""
    from datetime import timedelta

    from receiver.machine import DRIVER_LIFETIME
    from receiver.store import SYNC_COPY_SERVER_TIMEOUT_SECONDS

    hours, minutes, seconds = (
        int(part) for part in json.loads((ROOT / "host.json").read_text())["functionTimeout"].split(":")
    )
    timeout = timedelta(hours=hours, minutes=minutes, seconds=seconds)
    assert timeout + timedelta(seconds=SYNC_COPY_SERVER_TIMEOUT_SECONDS) <= DRIVER_LIFETIME, (DRIVER_LIFETIME, timeout)
