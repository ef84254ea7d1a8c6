"""infra/ (what `azd up` deploys), checked offline: no Bicep compiler and no Azure here.

- every .bicep file parses (pycep-parser) and checkov's Bicep policies pass (each skip says why, inline);
- the parsed tree grants exactly the intended roles at the intended scopes (Storage Blob Data Owner on
  the destination container, never its account);
- the app settings cover every setting receiver/settings.py reads (plus the contract's newer ones) with
  the receiver's own defaults, and every binding connection / %setting% in function_app.py, by identity;
- no key, connection string, SAS or secret anywhere in infra/;
- azure.yaml deploys the project root, and .funcignore keeps infra/ and azd's state out of the package.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any, cast

import annotated_types
import pathspec
import pytest
import yaml
from pycep import BicepParser

from receiver.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
BICEP_FILES = sorted(path.relative_to(INFRA).as_posix() for path in INFRA.rglob("*.bicep"))
CHECKOV = Path(os.environ.get("CHECKOV", str(ROOT / ".venv-checkov" / "bin" / "checkov")))

ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}
ACCOUNT = "Microsoft.Storage/storageAccounts"
CONTAINER = "Microsoft.Storage/storageAccounts/blobServices/containers"
# (file, role, type of the scope): every role assignment infra/ makes, and nothing else.
EXPECTED_ROLES = {
    ("app/host-storage.bicep", "Storage Blob Data Owner", ACCOUNT),
    ("app/host-storage.bicep", "Storage Queue Data Contributor", ACCOUNT),
    ("app/destination-access.bicep", "Storage Blob Data Owner", CONTAINER),
    ("app/monitoring.bicep", "Monitoring Metrics Publisher", "Microsoft.Insights/components"),
}
# CONTRACT section 5 settings that receiver/settings.py may not read yet, with the contract's defaults.
CONTRACT_SETTINGS: dict[str, object] = {
    "SYNC_COPY_MAX_MIB": 256,
    "RECONCILE_SCHEDULE": "0 */10 * * * *",
    "RECONCILE_AFTER_MINUTES": 10,
}
# Settings that would put a key into the app: the deployment uses the managed identity instead.
KEY_BASED_SETTINGS = {"DESTINATION_CONNECTION_STRING", "AzureWebJobsStorage"}
# Words that only appear where a key, connection string, SAS or secret is handled.
FORBIDDEN = re.compile(
    r"accountkey|listkeys|listaccountsas|listservicesas|listconnectionstrings|defaultendpointsprotocol|"
    r"sharedaccess|connectionstring|connection_string|connection string|secret|@secure|sig=|primarykey|"
    r"instrumentationkey",
    re.IGNORECASE,
)
# The one allowed exception: Application Insights' connection string names the ingestion endpoint and
# carries no credential once local auth is disabled (asserted below).
ALLOWED_LINE = "APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString"


@cache
def bicep(rel: str) -> dict[str, Any]:
    return cast(dict[str, Any], BicepParser().parse(file_path=INFRA / rel))


def resources(rel: str, type_: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in bicep(rel).get("resources", {}).items() if res["type"] == type_}


def only(rel: str, type_: str) -> dict[str, Any]:
    found = list(resources(rel, type_).values())
    assert len(found) == 1, f"{rel}: expected one {type_}, found {len(found)}"
    return cast(dict[str, Any], found[0]["config"])


def module_params(rel: str, name: str) -> dict[str, Any]:
    config = bicep(rel)["modules"][name]["config"]
    return cast(dict[str, Any], (config["config"] if "condition" in config else config)["params"])


def accessor(expr: object) -> list[str]:
    """`a.b.c` as ["a", "b", "c"]; a bare identifier as [name]; anything else as []."""
    if isinstance(expr, str):
        return [expr]
    if isinstance(expr, dict) and expr.get("operator", {}).get("type") == "property_accessor":
        operands = expr["operator"]["operands"]
        return [operands["operand_1"], *accessor(operands["operand_2"])]
    return []


def variable(rel: str, expr: object) -> Any:
    """The value of a variable named by `expr` (`name` or `name.key`)."""
    path = accessor(expr)
    value = bicep(rel)["variables"][path[0]]["value"]
    for key in path[1:]:
        value = value[key]
    return value


def param_of(rel: str, expr: object) -> str | None:
    """The parameter an app setting's value is made from: `p`, `string(p)` or `p ? 'true' : 'false'`."""
    params = bicep(rel)["parameters"]
    if isinstance(expr, str):
        return expr if expr in params else None
    if not isinstance(expr, dict):
        return None
    if expr.get("function", {}).get("type") == "string":
        return param_of(rel, expr["function"]["parameters"]["value_to_convert"])
    operator = expr.get("operator", {})
    if operator.get("type") == "conditional" and operator["operands"]["true_value"] == "true":
        operands = operator["operands"]
        assert operands["false_value"] == "false", operands
        return param_of(rel, operands["condition"])
    return None


def app_settings() -> dict[str, tuple[str, object]]:
    """Every app setting the deployment writes: name -> (file, Bicep expression of its value)."""
    settings = only("app/api.bicep", "Microsoft.Web/sites/config")
    assert settings["name"] == "appsettings"
    union = settings["properties"]["function"]
    assert union["type"] == "union"
    merged: dict[str, tuple[str, object]] = {}
    for arg in union["parameters"].values():
        if arg in bicep("app/api.bicep")["variables"]:
            merged.update({k: ("app/api.bicep", v) for k, v in variable("app/api.bicep", arg).items()})
        else:  # a parameter of api.bicep: follow it to what main.bicep passes
            passed = module_params("main.bicep", "api")[arg]
            merged.update({k: ("main.bicep", v) for k, v in variable("main.bicep", passed).items()})
    return merged


def setting_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return (alias if isinstance(alias, str) else field).upper()


def as_setting(value: object) -> str:
    """A default as the app setting string the receiver would parse back to it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def decorator(param: dict[str, Any], kind: str) -> object:
    return next((d["argument"] for d in param["decorators"] if d["type"] == kind), None)


def receiver_settings() -> dict[str, object]:
    """Every setting the receiver reads -> its default (receiver/settings.py, then CONTRACT section 5)."""
    found: dict[str, object] = dict(CONTRACT_SETTINGS)
    for field, info in Settings.model_fields.items():
        found[setting_name(field)] = info.default
    return found


def function_app_decorators() -> list[tuple[str, str, dict[str, object], list[object]]]:
    """(function, decorator, keyword arguments, positional arguments) for every decorator in function_app.py."""
    tree = ast.parse((ROOT / "function_app.py").read_text())
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name)
    }

    def literal(node: ast.expr) -> object:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return constants.get(node.id)
        return None

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute):
                    kwargs = {kw.arg: literal(kw.value) for kw in dec.keywords if kw.arg}
                    found.append((node.name, dec.func.attr, kwargs, [literal(a) for a in dec.args]))
    return found


# ---- parsing and policies ----


def test_infra_has_the_azd_layout() -> None:
    assert {"main.bicep", "app/api.bicep", "app/destination-access.bicep"} <= set(BICEP_FILES)
    assert (INFRA / "main.parameters.json").is_file()


@pytest.mark.parametrize("rel", BICEP_FILES)
def test_bicep_file_parses(rel: str) -> None:
    tree = bicep(rel)
    assert tree.get("resources") or tree.get("modules"), f"{rel} declares nothing"
    # Every declaration made it into the tree (a parser that drops one would blind the checks below).
    text = (INFRA / rel).read_text()
    assert len(re.findall(r"^resource \w+ '", text, re.MULTILINE)) == len(tree.get("resources", {}))
    assert len(re.findall(r"^module \w+ '", text, re.MULTILINE)) == len(tree.get("modules", {}))
    assert not re.search(r"^[ \t]+resource ", text, re.MULTILINE), "declare child resources at the top (parent:)"


def test_modules_are_local_files_and_every_file_is_used() -> None:
    used = {"main.bicep"}
    for rel in BICEP_FILES:
        for name, module in bicep(rel).get("modules", {}).items():
            # Registry modules (br:, br/public:) cannot be fetched here, nor expanded by checkov.
            assert module["type"] == "local", f"{rel}: module {name} is not a local file"
            target = (INFRA / rel).parent / module["detail"]["path"]
            assert target.is_file(), f"{rel}: module {name} points at a missing {target}"
            used.add(target.resolve().relative_to(INFRA).as_posix())
    assert used == set(BICEP_FILES)


def test_checkov_finds_no_failed_check() -> None:
    if not CHECKOV.exists():
        pytest.fail(f"checkov is not installed at {CHECKOV}: run `make install` (it creates .venv-checkov)")
    # Offline: no platform download, no mapping download, no version check.
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "true"}
    run = subprocess.run(
        [str(CHECKOV), "--framework", "bicep", "--skip-download", "--directory", str(INFRA), "--output", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    report = json.loads(run.stdout)
    summary = report["summary"]
    results = report["results"]
    failed = [(c["check_id"], c["file_path"], c["resource"]) for c in results.get("failed_checks", [])]
    assert failed == [], f"checkov failed checks (fix them, or skip inline with a reason): {failed}"
    assert summary["parsing_errors"] == 0, results.get("parsing_errors")
    assert run.returncode == 0, run.stderr[-2000:]
    assert summary["passed"] >= 20  # it really ran its Azure checks
    for check in results.get("skipped_checks", []):
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason.split()) >= 8, f"{check['check_id']} on {check['resource']} is skipped without a reason"


# ---- roles: least privilege ----


def test_roles_are_exactly_the_intended_ones_at_the_intended_scopes() -> None:
    found = set()
    for rel in BICEP_FILES:
        for name, res in resources(rel, "Microsoft.Authorization/roleAssignments").items():
            config = res["config"]
            where = f"{rel}: {name}"
            role_id = config["properties"]["roleDefinitionId"]["function"]
            assert role_id["type"] == "subscription_resource_id", where
            assert role_id["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions", where
            role = ROLES[variable(rel, role_id["parameters"]["resource_name_1"])]
            # An explicit scope on a resource of this file: never the resource group or subscription.
            assert "scope" in config, f"{where} has no scope: it would apply to the whole resource group"
            scope = bicep(rel)["resources"][config["scope"]]
            # The role goes to the app's identity, typed so a fresh principal does not fail to replicate.
            assert config["properties"]["principalId"] == "principalId", where
            assert config["properties"]["principalType"] == "ServicePrincipal", where
            # A stable name per (scope, principal, role), so a redeploy does not fail with RoleAssignmentExists.
            guid = config["name"]["function"]
            assert guid["type"] == "guid", where
            assert accessor(guid["parameters"]["base_string"]) == [config["scope"], "id"], where
            found.add((rel, role, scope["type"]))
    assert found == EXPECTED_ROLES
    assert not any(role == "Storage Table Data Contributor" for _, role, _ in found)  # no Durable Functions


def test_destination_role_is_scoped_to_the_container_the_app_writes_to() -> None:
    rel = "app/destination-access.bicep"
    container = only(rel, CONTAINER)
    assert container["name"] == "containerName"
    assert container["properties"]["publicAccess"] == "None"
    assert container["parent"] == "blobService"
    assert only(rel, "Microsoft.Storage/storageAccounts/blobServices")["parent"] == "account"
    assert module_params("main.bicep", "destination")["containerName"] == "destinationContainer"
    assert app_settings()["DESTINATION_CONTAINER"] == ("main.bicep", "destinationContainer")
    assert accessor(app_settings()["DESTINATION_ACCOUNT_URL"][1]) == ["destination", "outputs", "accountUrl"]


def test_host_storage_holds_the_verification_queues_and_takes_no_shared_key() -> None:
    rel = "app/host-storage.bicep"
    account = only(rel, ACCOUNT)["properties"]
    assert account["allowSharedKeyAccess"] is False
    assert account["allowBlobPublicAccess"] is False
    assert account["minimumTlsVersion"] == "TLS1_2"
    queues = {
        variable(rel, q["config"]["name"]) if q["config"]["name"] in bicep(rel)["variables"] else q["config"]["name"]
        for q in resources(rel, "Microsoft.Storage/storageAccounts/queueServices/queues").values()
    }
    bound = {kwargs["queue_name"] for _, _, kwargs, _ in function_app_decorators() if "queue_name" in kwargs}
    assert bound, "function_app.py binds no queue?"
    for queue in bound:
        assert queue in queues
        assert "${verificationQueueName}-poison" in queues and variable(rel, "verificationQueueName") == queue


def test_a_new_destination_account_supports_index_tags_and_takes_no_shared_key() -> None:
    account = only("app/destination-account.bicep", ACCOUNT)["properties"]
    assert account["isHnsEnabled"] is False  # blob index tags are not supported with hierarchical namespace
    assert account["allowSharedKeyAccess"] is False
    assert account["allowBlobPublicAccess"] is False


# ---- app settings ----


def test_app_settings_cover_every_receiver_setting_by_identity() -> None:
    settings = app_settings()
    wanted = set(receiver_settings()) - KEY_BASED_SETTINGS
    assert wanted <= set(settings), f"missing app settings: {sorted(wanted - set(settings))}"
    assert not KEY_BASED_SETTINGS & set(settings)
    assert "DESTINATION_ACCOUNT_URL" in settings
    # DefaultAzureCredential picks the user-assigned identity by AZURE_CLIENT_ID.
    assert settings["AZURE_CLIENT_ID"] == ("app/api.bicep", "identityClientId")
    # Flex Consumption rejects these: the runtime is in functionAppConfig.
    assert not {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE"} & set(settings)


def test_app_setting_defaults_are_the_receivers_and_azd_can_set_each() -> None:
    main = bicep("main.bicep")
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    defaults = receiver_settings()
    checked = set()
    for name, (rel, expr) in app_settings().items():
        if name not in defaults:
            continue
        param_name = param_of(rel, expr)
        if param_name is None:
            continue  # derived from a resource (DESTINATION_ACCOUNT_URL)
        param = main["parameters"][param_name]
        assert as_setting(param["default"]) == as_setting(defaults[name]), name
        # `azd env set NAME value` reaches it under the setting's own name.
        assert azd[param_name]["value"] == "${" + name + "}", name
        checked.add(name)
        if name.lower() in Settings.model_fields:  # bounds agree with the receiver's validation
            for meta in Settings.model_fields[name.lower()].metadata:
                if isinstance(meta, annotated_types.Ge) and decorator(param, "min_value") is not None:
                    assert decorator(param, "min_value") == meta.ge, name
                if isinstance(meta, annotated_types.Le) and decorator(param, "max_value") is not None:
                    assert decorator(param, "max_value") == meta.le, name
    assert set(defaults) - KEY_BASED_SETTINGS - {"DESTINATION_ACCOUNT_URL"} == checked


def test_every_binding_connection_and_setting_reference_resolves_by_identity() -> None:
    settings = app_settings()
    decorators = function_app_decorators()
    connections = [(attr, str(kwargs["connection"])) for _, attr, kwargs, _ in decorators if "connection" in kwargs]
    assert connections, "function_app.py names no binding connection?"
    for attr, connection in connections:
        assert connection not in settings, f"{connection} would be a connection string: use {connection}__*"
        assert settings[f"{connection}__credential"] == ("app/api.bicep", "managedidentity")
        assert settings[f"{connection}__clientId"] == ("app/api.bicep", "identityClientId")
        service = "queue" if attr.startswith("queue") else "blob" if attr.startswith("blob") else None
        assert service, f"unexpected binding {attr}: teach this test its service URI"
        assert f"{connection}__{service}ServiceUri" in settings
    # The host itself needs blob (keys, timers, leases) and queue (the verification queue) by identity.
    assert {"AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__queueServiceUri"} <= set(settings)
    # %NAME% in a binding (e.g. a timer's schedule) is read from the app settings.
    for function, _, kwargs, args in decorators:
        for value in [*kwargs.values(), *args]:
            for name in re.findall(r"%([A-Za-z0-9_]+)%", str(value)):
                assert name in settings, f"{function} reads %{name}% which no app setting provides"


# ---- the app, monitoring, outputs ----


def test_flex_consumption_python_312_on_the_user_assigned_identity() -> None:
    rel = "app/api.bicep"
    assert only(rel, "Microsoft.Web/serverfarms")["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    app = only(rel, "Microsoft.Web/sites")
    assert app["identity"]["type"] == "UserAssigned"
    assert app["properties"]["httpsOnly"] is True
    flex = app["properties"]["functionAppConfig"]
    assert flex["runtime"] == {"name": "python", "version": "3.12"}
    storage = flex["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": "identityId",
    }
    scale = flex["scaleAndConcurrency"]
    assert scale["triggers"]["http"]["perInstanceConcurrency"] == "httpPerInstanceConcurrency"
    assert "alwaysReadyHttpInstances" in json.dumps(scale["alwaysReady"])
    passed = module_params("main.bicep", "api")
    for knob in ("httpPerInstanceConcurrency", "alwaysReadyHttpInstances", "instanceMemoryMB", "maximumInstanceCount"):
        assert passed[knob] == knob
        assert "default" in bicep("main.bicep")["parameters"][knob]


def test_telemetry_takes_entra_id_only_and_an_error_alert_is_wired() -> None:
    rel = "app/monitoring.bicep"
    assert only(rel, "Microsoft.Insights/components")["properties"]["DisableLocalAuth"] is True
    workspace = only(rel, "Microsoft.OperationalInsights/workspaces")
    assert workspace["properties"]["features"]["disableLocalAuth"] is True
    settings = app_settings()
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        "app/api.bicep",
        "ClientId=${identityClientId};Authorization=AAD",
    )
    # The worker configures OpenTelemetry (host.json telemetryMode); the app never does it a second time.
    assert settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == ("app/api.bicep", "true")
    alert = only(rel, "Microsoft.Insights/scheduledQueryRules")["properties"]
    assert [accessor(scope) for scope in alert["scopes"]] == [["applicationInsights", "id"]]
    [criterion] = alert["criteria"]["allOf"]
    assert (criterion["operator"], criterion["threshold"], criterion["timeAggregation"]) == ("GreaterThan", 0, "Count")
    loaded = variable(rel, criterion["query"])["function"]
    assert loaded["type"] == "load_text_content"
    query = (INFRA / "app" / loaded["parameters"]["file_path"]).read_text()
    assert "severityLevel >= 3" in query
    # docs/operations.md documents the exact query (tests/test_queries.py checks it against real envelopes).
    assert query.strip() in (ROOT / "docs" / "operations.md").read_text()


def test_outputs_give_the_webhook_url_without_key_the_key_command_and_the_container_url() -> None:
    main = bicep("main.bicep")
    outputs = {name: out["value"] for name, out in main["outputs"].items()}
    routes = {
        kwargs["route"]: function
        for function, attr, kwargs, _ in function_app_decorators()
        if attr == "route" and "route" in kwargs
    }
    names = {function: args[0] for function, attr, _, args in function_app_decorators() if attr == "function_name"}
    webhook = next(route for route in routes if "anonymization" in str(route))
    assert outputs["WEBHOOK_URL"] == "https://${api.outputs.defaultHostName}/api/" + str(webhook)
    assert "code=" not in outputs["WEBHOOK_URL"]
    assert "routePrefix" not in (ROOT / "host.json").read_text()  # so /api/ is right
    command = outputs["WEBHOOK_KEY_COMMAND"]
    assert command.startswith("az functionapp function keys list ")
    assert "--function-name ${webhookFunctionName}" in command
    assert variable("main.bicep", "webhookFunctionName") == names[routes[webhook]]
    assert "DESTINATION_CONTAINER_URL" in outputs
    assert outputs["HEALTH_URL"] == "https://${api.outputs.defaultHostName}/api/health"


def test_azd_parameters_are_main_bicep_parameters() -> None:
    main = bicep("main.bicep")
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(azd) <= set(main["parameters"])
    required = {name for name, param in main["parameters"].items() if "default" not in param}
    assert required <= set(azd)
    env_names = [entry["value"] for entry in azd.values()]
    assert all(re.fullmatch(r"\$\{[A-Z][A-Z0-9_]*\}", value) for value in env_names)
    assert len(env_names) == len(set(env_names))
    # azd writes outputs into the same environment: an output named like an input would feed itself back
    # (AZURE_LOCATION is azd's own and echoes the input).
    assert not {value[2:-1] for value in env_names} & set(main["outputs"]) - {"AZURE_LOCATION"}
    assert main["outputs"]["AZURE_LOCATION"]["value"] == "location"


# ---- no keys; packaging ----


def test_no_key_connection_string_sas_or_secret_in_infra() -> None:
    scanned = [path for path in INFRA.rglob("*") if path.is_file()] + [ROOT / "azure.yaml"]
    for path in scanned:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip() == ALLOWED_LINE:
                continue
            match = FORBIDDEN.search(line)
            assert match is None, f"{path.relative_to(ROOT)}:{number}: {match.group(0)!r}"
    assert ALLOWED_LINE in (INFRA / "app" / "api.bicep").read_text()


def test_azure_yaml_deploys_the_project_root_as_a_python_function() -> None:
    config = yaml.safe_load((ROOT / "azure.yaml").read_text())
    api = config["services"]["api"]
    assert api["project"] in (".", "./")
    assert (api["language"], api["host"]) == ("python", "function")
    assert config.get("infra", {}).get("path", "infra") == "infra"


def test_funcignore_keeps_infra_and_azd_state_out_of_the_package() -> None:
    ignore = pathspec.GitIgnoreSpec.from_lines((ROOT / ".funcignore").read_text().splitlines())
    for path in (
        "infra/main.bicep",
        "infra/app/api.bicep",
        "infra/main.parameters.json",
        "azure.yaml",
        ".azure/dev/.env",
        ".venv-checkov/bin/checkov",
        "requirements-checkov.txt",
    ):
        assert ignore.match_file(path), path
    for path in ("function_app.py", "receiver/settings.py", "host.json", "requirements.txt"):
        assert not ignore.match_file(path), path
