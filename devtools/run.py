"""`make run`: Azurite (data in .azurite/) plus the function app on http://127.0.0.1:7071/api/.

Uses `func start` when Azure Functions Core Tools is on PATH, otherwise the dev-only local
host (devtools/localhost.py). Creates local.settings.json from the example when missing.
Ctrl-C stops everything it started.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

from devtools.azurite import start_azurite, stop_process

ROOT = Path(__file__).resolve().parent.parent
AZURITE_PORTS = (10000, 10001, 10002)  # what UseDevelopmentStorage=true and the example settings expect


def main() -> int:
    settings = ROOT / "local.settings.json"
    if not settings.exists():
        shutil.copyfile(ROOT / "local.settings.json.example", settings)
        print("Created local.settings.json from local.settings.json.example")
    data = ROOT / ".azurite"
    data.mkdir(exist_ok=True)
    try:
        azurite = start_azurite(location=str(data), ports=AZURITE_PORTS)
    except RuntimeError as error:
        print(f"Azurite could not start on ports {AZURITE_PORTS} (already running?): {error}")
        return 1
    blob, queue, _ = AZURITE_PORTS
    print(f"Azurite: blob http://127.0.0.1:{blob}, queue http://127.0.0.1:{queue} (data in .azurite/)")
    func_tool = shutil.which("func")
    if func_tool:
        command = [func_tool, "start", "--port", "7071"]
        print("Serving with Azure Functions Core Tools (func start)")
    else:
        command = [sys.executable, "-m", "devtools.localhost", "--port", "7071", "--settings", str(settings)]
        print("Core Tools not found: serving with the local host (devtools/localhost.py)")
    host = subprocess.Popen(command, cwd=ROOT)
    try:
        return host.wait()
    except KeyboardInterrupt:
        stop_process(host, sig=signal.SIGINT, timeout=15)
        return 0
    finally:
        azurite.stop()
        print("Stopped Azurite and the function host.")


if __name__ == "__main__":
    sys.exit(main())
