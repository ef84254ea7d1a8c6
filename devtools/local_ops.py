"""`make ops-local ARGS="pending"`: the operator command line (`python -m ops`) against `make run`'s storage.

It finds the running `make run`'s ports (.azurite/make-run.json; without one, Azurite's default ports) and
its settings file, and gives ops the same storage the local receiver uses, as environment variables:
DESTINATION_CONNECTION_STRING, DESTINATION_CONTAINER, AzureWebJobsStorage (replay-poison), the app settings ops
reads (ops.connect.APP_SETTINGS), and WEBHOOK_URL
(`make ops-local ARGS=smoke` runs the smoke test against `make run`). Nothing is printed but what ops
prints; the connection strings stay in this process's environment.

    python -m devtools.local_ops [ops arguments...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from devtools.azurite import DEV_ACCOUNT, DEV_KEY, connection_string
from devtools.ports import DEFAULT_AZURITE_PORTS, DEFAULT_HOST_PORT, read_state
from devtools.run import SETTINGS, azurite_environment, settings_values
from ops.connect import APP_SETTINGS


def local_environment(state: dict[str, object] | None) -> dict[str, str]:
    """What ops needs to reach `make run`'s storage and receiver (``state``: its make-run.json, or None)."""
    state = state or {}
    raw_ports = state.get("azurite_ports")
    ports = tuple(int(p) for p in raw_ports) if isinstance(raw_ports, list) and len(raw_ports) == 3 else None
    azurite_ports = (ports[0], ports[1], ports[2]) if ports else DEFAULT_AZURITE_PORTS
    settings = Path(str(state.get("settings") or SETTINGS))
    values = settings_values(settings if settings.exists() else SETTINGS.with_name("local.settings.json.example"))
    values.update(azurite_environment(values, azurite_ports, environ={}))
    # The destination, and the app settings that shape what ops foresees (a replay's dry run judges links by
    # ALLOWED_SOURCE_HOSTS, names by BLOB_NAME_TEMPLATE): as `make run`'s receiver has them.
    names = ("DESTINATION_CONNECTION_STRING", "DESTINATION_ACCOUNT_URL", "DESTINATION_CONTAINER", *APP_SETTINGS)
    env = {name: values[name] for name in names if values.get(name)}
    host_storage = values.get("AzureWebJobsStorage")
    if host_storage and host_storage.strip().lower() == "usedevelopmentstorage=true":
        host_storage = connection_string(DEV_ACCOUNT, DEV_KEY, azurite_ports[0], azurite_ports[1])
    if host_storage:
        env["AzureWebJobsStorage"] = host_storage
    env["WEBHOOK_URL"] = f"http://127.0.0.1:{state.get('port') or DEFAULT_HOST_PORT}/api/smartdocumentor/anonymization"
    return env


def main(argv: list[str] | None = None) -> int:
    if read_state() is None:
        print(
            "make ops-local: no `make run` is running (no .azurite/make-run.json): using Azurite's default ports",
            file=sys.stderr,
        )
    state = read_state()
    os.environ.update(local_environment(state))
    from ops.cli import main as ops_main  # after the environment is set

    args = sys.argv[1:] if argv is None else argv
    code = ops_main(args)
    if code != 0 and args[:1] in (["pending"], ["failed"]):
        # They read the summary the reconciliation writes; locally its next run may be minutes away.
        port = (state or {}).get("port") or DEFAULT_HOST_PORT
        print(
            "make ops-local: to run the reconciliation now (it writes the summary pending and failed read): "
            f"curl -X POST http://127.0.0.1:{port}/admin/functions/reconcile_deliveries "
            "-H 'Content-Type: application/json' -d '{}'",
            file=sys.stderr,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
