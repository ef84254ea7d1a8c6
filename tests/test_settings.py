"""Settings checked when the app loads (one ERROR naming the setting), and BLOB_NAME_TEMPLATE's rules."""

from __future__ import annotations

import logging

import pytest

from receiver.settings import Settings, SettingsError, check_at_start, load_settings

LOG = logging.getLogger("receiver.test-settings")


def template_error(template: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DESTINATION_CONNECTION_STRING", "UseDevelopmentStorage=true")
    monkeypatch.setenv("BLOB_NAME_TEMPLATE", template)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert caught.value.setting == "BLOB_NAME_TEMPLATE"
    return caught.value.message


@pytest.mark.parametrize(
    "template", ["{workspaceId}/{taskId}/{fileName}.{ext}", "{workspaceId}/{taskId}/{ext}-{fileName}"]
)
def test_file_name_and_ext_in_one_segment_is_refused_before_it_names_x_pdf_pdf(
    template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = template_error(template, monkeypatch)
    assert "scan.pdf.pdf" in message and "write {fileName} alone" in message


@pytest.mark.parametrize(("template", "written"), [("{fileName:>10}", "{fileName:>10}"), ("{taskId!r}", "{taskId!r}")])
def test_a_format_spec_is_named_as_such_not_as_an_unknown_placeholder(
    template: str, written: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = template_error(f"{{workspaceId}}/{{taskId}}/{template}", monkeypatch)
    assert "format specs and conversions are not supported" in message and written in message
    assert "unknown placeholder" not in message


def test_an_unknown_placeholder_is_still_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "unknown placeholder {taskid}" in template_error("{workspaceId}/{taskid}/{fileName}", monkeypatch)


def test_task_number_glued_to_the_workspace_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # workspace "a1" + task 23 and workspace "a12" + task 3 would both be "a123".
    message = template_error("{workspaceId}{taskNumber}/{fileName}", monkeypatch)
    assert "{workspaceId}{taskNumber} has nothing between them" in message


@pytest.mark.parametrize(
    "template",
    [
        "{workspaceId}/{displayName}1{taskNumber}.{ext}",  # "x" with task 12 and "x1" with task 2: "x112"
        "{workspaceId}/{taskNumber}0-{fileName}",
    ],
)
def test_a_digit_right_next_to_the_task_number_is_refused(template: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "right next to {taskNumber}" in template_error(template, monkeypatch)


@pytest.mark.parametrize(
    "template", ["{yyyy}/{workspaceId}/{taskNumber}-{fileName}", "{yyyy}/{mm}/{workspaceId}-{taskNumber}.{ext}"]
)
def test_a_task_number_between_separators_is_accepted(template: str) -> None:
    Settings(destination_connection_string="UseDevelopmentStorage=true", blob_name_template=template)


def test_task_number_templates_warn_at_start_and_task_id_templates_do_not(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DESTINATION_CONNECTION_STRING", "UseDevelopmentStorage=true")
    monkeypatch.setenv("BLOB_NAME_TEMPLATE", "{workspaceId}/{taskNumber}/{fileName}")
    with caplog.at_level(logging.INFO, logger=LOG.name):
        assert isinstance(check_at_start(LOG), Settings)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "within a workspace" in warnings[0].getMessage()
    assert "{taskId}" in warnings[0].getMessage()

    caplog.clear()
    monkeypatch.setenv("BLOB_NAME_TEMPLATE", "{workspaceId}/{taskId}/{fileName}")
    with caplog.at_level(logging.INFO, logger=LOG.name):
        assert isinstance(check_at_start(LOG), Settings)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_bad_setting_at_start_is_one_error_naming_it_and_never_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0LWtleQ=="
    monkeypatch.setenv("DESTINATION_CONNECTION_STRING", secret)
    monkeypatch.setenv("DESTINATION_ACCOUNT_URL", "https://acct.blob.core.windows.net")
    monkeypatch.setenv("COPY_WAIT_SECONDS", "99")
    with caplog.at_level(logging.INFO, logger=LOG.name):
        assert check_at_start(LOG) is None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, caplog.text
    assert "COPY_WAIT_SECONDS" in errors[0].getMessage() and "misconfigured" in errors[0].getMessage()
    assert "c2VjcmV0LWtleQ" not in caplog.text


def _import_app(*, in_worker: bool, env: dict[str, str]) -> str:
    """Import function_app.py in a fresh interpreter, as the Functions worker would (or a tool); its log."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import logging, sys, types\n"
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')\n"
        + (
            "sys.modules['azure_functions_runtime'] = types.ModuleType('azure_functions_runtime')\n"
            if in_worker
            else ""
        )
        + "import function_app\n"
        "import function_app  # imported again: still one check\n"
        "print('loaded', len(function_app.app.get_functions()))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DESTINATION_", "BLOB_NAME", "COPY_WAIT"))}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "loaded 4" in done.stdout
    return done.stderr


def test_the_workers_first_load_logs_one_error_naming_the_bad_setting() -> None:
    logged = _import_app(in_worker=True, env={"DESTINATION_CONNECTION_STRING": "x", "COPY_WAIT_SECONDS": "-1"})
    errors = [line for line in logged.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, logged
    assert "COPY_WAIT_SECONDS" in errors[0] and errors[0].startswith("ERROR receiver:")


def test_a_tool_importing_the_app_logs_nothing_and_valid_settings_log_no_error() -> None:
    assert "ERROR" not in _import_app(in_worker=False, env={"COPY_WAIT_SECONDS": "-1"})
    assert "ERROR" not in _import_app(
        in_worker=True, env={"DESTINATION_CONNECTION_STRING": "UseDevelopmentStorage=true"}
    )
