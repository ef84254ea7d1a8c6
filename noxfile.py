"""`make test-all`: the test suite on every Python the receiver supports: 3.11, 3.12 (Azure's) and 3.13.

Each interpreter gets a virtualenv of its own under .nox/, built from requirements-dev.txt (on
3.13 that installs azure-functions 2.x), and runs pytest. Lint and type checks run once, in
`make test`. The session exporter_floor runs the telemetry and query tests (tests/test_queries.py
evaluates the alert and the workbook's queries on the envelopes the exporter writes) with the lowest
azure-monitor-opentelemetry-exporter requirements.txt allows, from PyPI, so a floor that no longer
writes what the queries filter on fails here. An interpreter this machine lacks is skipped, and
nox says so in its summary; with REQUIRE_ALL_PYTHONS=1 (.ci/run sets it) a missing one fails the run. Interpreters are
never downloaded. pyenv's are preferred, even when another version is the active one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import nox

PYTHONS = ["3.11", "3.12", "3.13"]
ROOT = Path(__file__).resolve().parent
LINKS = ROOT / ".nox" / "pythons"

nox.options.sessions = ["tests", "exporter_floor"]
nox.options.reuse_venv = "yes"  # reinstalling requirements into a kept venv is quick
nox.options.download_python = "never"  # a missing interpreter is reported, not fetched
if os.environ.get("REQUIRE_ALL_PYTHONS") == "1":
    nox.options.error_on_missing_interpreters = True


def _runs(executable: str) -> bool:
    try:
        return subprocess.run([executable, "-c", "pass"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _pyenv_python(version: str) -> Path | None:
    """The newest pyenv-installed CPython ``version``.x, whether or not it is the active version."""
    root = os.environ.get("PYENV_ROOT")
    pyenv = shutil.which("pyenv")
    if not root and pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False).stdout.strip()
    if not root:
        return None
    found = []
    for candidate in (Path(root) / "versions").glob(f"{version}.*"):
        match = re.fullmatch(rf"{re.escape(version)}\.(\d+)", candidate.name)  # not 3.13.0t (free-threaded)
        executable = candidate / "bin" / f"python{version}"
        if match and executable.is_file():
            found.append((int(match.group(1)), executable))
    return max(found)[1] if found else None


def _make_interpreters_findable() -> None:
    """pyenv's shims only reach the active version (or fall back to the system's), so when pyenv
    has a version, a link to it goes first on PATH; other versions are looked up on PATH."""
    for version in PYTHONS:
        real = _pyenv_python(version)
        if real is None or not _runs(str(real)):
            continue
        LINKS.mkdir(parents=True, exist_ok=True)
        link = LINKS / f"python{version}"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(real)
        if str(LINKS) not in os.environ["PATH"].split(os.pathsep):
            os.environ["PATH"] = f"{LINKS}{os.pathsep}{os.environ['PATH']}"


_make_interpreters_findable()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """pytest on one interpreter (Azurite from node_modules: `make test-all` runs `npm ci` first)."""
    session.install("--quiet", "-r", "requirements-dev.txt")
    session.run(
        "python",
        "-c",
        "import sys, importlib.metadata as m; "
        "print('Python', sys.version.split()[0], '| azure-functions', m.version('azure-functions'))",
    )
    # Three workers, as `make test` runs them (each starts its own Azurite); NOXFLAGS='-- ...' overrides.
    session.run("pytest", *(session.posargs or ["-n", "3", "--dist", "worksteal"]))


EXPORTER = "azure-monitor-opentelemetry-exporter"


def exporter_floor_version() -> str:
    """The lowest exporter version requirements.txt allows (its ``>=``)."""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.fullmatch(rf"{re.escape(EXPORTER)}>=([^,\s]+),.*", line.strip())
        if match:
            return match.group(1)
    raise ValueError(f"requirements.txt has no {EXPORTER}>= floor")


@nox.session(python="3.12")
def exporter_floor(session: nox.Session) -> None:
    """The telemetry and query tests with the exporter's floor (and the distro and OpenTelemetry it pins)."""
    floor = exporter_floor_version()
    session.install("--quiet", "-r", "requirements-dev.txt", f"{EXPORTER}=={floor}")
    session.run(
        "python",
        "-c",
        f"import importlib.metadata as m; v = m.version({EXPORTER!r}); print({EXPORTER!r}, v); "
        f"assert v == {floor!r}, v",
    )
    session.run("pytest", "tests/test_queries.py", "tests/test_telemetry.py", *session.posargs)
