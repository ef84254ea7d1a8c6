"""infra/ (what `azd up` deploys), checked offline: no Bicep compiler and no Azure here.

- every .bicep file parses (pycep-parser) and checkov's Bicep policies pass (each skip says why, inline);
- the parsed tree grants exactly the intended roles at the intended scopes (Storage Blob Data Owner on
  the destination container, never its account);
- the app settings cover every setting receiver/settings.py reads (plus the newer ones docs/reference.md lists) with
  the receiver's own defaults, and every binding connection / %setting% in function_app.py, by identity;
- no key, connection string, SAS or secret anywhere in infra/;
- azure.yaml deploys the project root, and .funcignore keeps infra/ and azd's state out of the package;
- azd >= 1.24.1, the scale floor, the receiver's bounds, no hard-coded cloud suffix, the documents in a
  resource group the template never creates (and the optional delete lock), the operator's optional roles,
  VNet mode's `bypass: 'None'`, defaults an empty ${VAR} cannot silently replace;
- the hooks and infra/delete-documents.sh, run with a stand-in `az` on PATH: the Microsoft.App provider,
  the documents' resource group, the bounded wait for roles, the app's role removed before `azd down`.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
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
    "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1": "Storage Blob Data Reader",
}
ACCOUNT = "Microsoft.Storage/storageAccounts"
CONTAINER = "Microsoft.Storage/storageAccounts/blobServices/containers"
# (file, role, type of the scope, who): every role assignment infra/ makes, and nothing else. "app" is the
# app's identity, always; "operator" the person running `azd up` (principalId), only when azd knows them.
EXPECTED_ROLES = {
    ("app/host-storage.bicep", "Storage Blob Data Owner", ACCOUNT, "app"),
    ("app/host-storage.bicep", "Storage Queue Data Contributor", ACCOUNT, "app"),
    ("app/destination-access.bicep", "Storage Blob Data Owner", CONTAINER, "app"),
    ("app/monitoring.bicep", "Monitoring Metrics Publisher", "Microsoft.Insights/components", "app"),
    ("app/host-storage.bicep", "Storage Queue Data Contributor", ACCOUNT, "operator"),
    ("app/destination-access.bicep", "Storage Blob Data Owner", CONTAINER, "operator"),
    ("app/host-storage.bicep", "Storage Blob Data Reader", CONTAINER, "operator"),
}
# The Bicep parameter each module takes the operator's object id in.
OPERATOR_PARAM = "operatorPrincipalId"
# Settings of docs/reference.md ("Configuration") that receiver/settings.py may not read yet, with their defaults.
REFERENCE_SETTINGS: dict[str, object] = {
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


def unwrap(config: dict[str, Any]) -> tuple[object, dict[str, Any]]:
    """A resource's (condition or None, body): `= if (c) {...}` parses as {"condition": c, "config": {...}}."""
    if set(config) == {"condition", "config"}:
        return config["condition"], cast(dict[str, Any], config["config"])
    return None, config


def resources(rel: str, type_: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in bicep(rel).get("resources", {}).items() if res["type"] == type_}


def only(rel: str, type_: str) -> dict[str, Any]:
    found = list(resources(rel, type_).values())
    assert len(found) == 1, f"{rel}: expected one {type_}, found {len(found)}"
    return unwrap(found[0]["config"])[1]


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


# What `environment().suffixes.storage` is in Azure's public cloud (sovereign clouds have their own).
PUBLIC_STORAGE_SUFFIX = "core.windows.net"


def evaluate(rel: str, expr: object, given: dict[str, object]) -> object:
    """The value of a Bicep expression of `rel` in the public cloud, with parameters `given` (else defaults).

    Enough of Bicep for the conditions tested here: literals, parameters, variables, a resource's name,
    `${...}` interpolation, and / or / not / == / != / ?:, empty(), toLower(). A bare string that names no
    parameter, variable or resource is a string literal (pycep parses both as str).
    It follows pycep's tree, and pycep 0.7 gets precedence wrong (`!a && b` parses as `!(a && b)`,
    `a || b ? x : y` as `a || (b ? x : y)`): infra/ writes such conditions with parentheses.
    """
    tree = bicep(rel)

    def value(node: object) -> object:
        if isinstance(node, bool | int):
            return node
        if isinstance(node, str):
            if node in given:
                return given[node]
            if node in tree.get("parameters", {}):
                return value(tree["parameters"][node]["default"])
            if node in tree.get("variables", {}):
                return value(tree["variables"][node]["value"])
            text = node.replace("${environment().suffixes.storage}", PUBLIC_STORAGE_SUFFIX)
            return re.sub(r"\$\{(\w+)\}", lambda m: str(value(m.group(1))), text)
        assert isinstance(node, dict), node
        if "function" in node:
            function = node["function"]
            [argument] = function["parameters"].values()
            if function["type"] == "empty":
                return not value(argument)
            if function["type"] == "to_lower":
                return str(value(argument)).lower()
            raise NotImplementedError(function["type"])
        operator = node["operator"]
        kind, operands = operator["type"], operator["operands"]
        if kind == "property_accessor" and operands["operand_2"] == "name":
            resource = tree["resources"][operands["operand_1"]]
            return value(unwrap(resource["config"])[1]["name"])
        if kind == "conditional":
            branch = "true_value" if value(operands["condition"]) else "false_value"
            return value(operands[branch])
        if kind == "not":
            return not value(operands["bool_value"])
        left, right = value(operands["operand_1"]), value(operands["operand_2"])
        results = {"and": bool(left and right), "or": bool(left or right), "equals": left == right}
        results["not_equals"] = left != right
        return results[kind]

    return value(expr)


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
    """Every setting the receiver reads -> its default (receiver/settings.py, then docs/reference.md)."""
    found: dict[str, object] = dict(REFERENCE_SETTINGS)
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
            condition, config = unwrap(res["config"])
            where = f"{rel}: {name}"
            role_id = config["properties"]["roleDefinitionId"]["function"]
            assert role_id["type"] == "subscription_resource_id", where
            assert role_id["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions", where
            role = ROLES[variable(rel, role_id["parameters"]["resource_name_1"])]
            # An explicit scope on a resource of this file: never the resource group or subscription.
            assert "scope" in config, f"{where} has no scope: it would apply to the whole resource group"
            scope = bicep(rel)["resources"][config["scope"]]
            principal = config["properties"]["principalId"]
            if principal == "principalId":
                # The app's identity, always, typed so a fresh principal does not fail to replicate.
                who = "app"
                assert condition is None, f"{where}: the app's role must not be conditional"
                assert config["properties"]["principalType"] == "ServicePrincipal", where
            else:
                # The operator's, only when azd knows them (AZURE_PRINCIPAL_ID): skipped when empty. Untyped:
                # azd's principal is a user, or a service principal in CI.
                who = "operator"
                assert principal == OPERATOR_PARAM, where
                assert evaluate(rel, condition, {OPERATOR_PARAM: ""}) is False, where
                assert evaluate(rel, condition, {OPERATOR_PARAM: "00000000-0000-0000-0000-000000000001"}) is True
                assert "principalType" not in config["properties"], where
                assert bicep(rel)["parameters"][OPERATOR_PARAM]["default"] == "", where
            # A stable name per (scope, principal, role), so a redeploy does not fail with RoleAssignmentExists.
            guid = config["name"]["function"]
            assert guid["type"] == "guid", where
            assert accessor(guid["parameters"]["base_string"]) == [config["scope"], "id"], where
            found.add((rel, role, scope["type"], who))
    assert found == EXPECTED_ROLES
    assert not any(role == "Storage Table Data Contributor" for _, role, _, _ in found)  # no Durable Functions


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
        # In the public cloud: a default may be made from the cloud's storage suffix (ALLOWED_SOURCE_HOSTS).
        assert as_setting(evaluate("main.bicep", param["default"], {})) == as_setting(defaults[name]), name
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
    rules = resources(rel, "Microsoft.Insights/scheduledQueryRules")
    assert set(rules) == {"errorAlert", "heartbeatAlert"}
    # Any ERROR fires the first; no completed reconciliation run fires the second (zero rows).
    expected = {"errorAlert": ("GreaterThan", 0, "severityLevel >= 3"), "heartbeatAlert": ("LessThan", 1, "completed")}
    for name, (operator, threshold, text) in expected.items():
        alert = unwrap(rules[name]["config"])[1]["properties"]
        assert [accessor(scope) for scope in alert["scopes"]] == [["applicationInsights", "id"]]
        [criterion] = alert["criteria"]["allOf"]
        assert (criterion["operator"], criterion["threshold"], criterion["timeAggregation"]) == (
            operator,
            threshold,
            "Count",
        )
        loaded = variable(rel, criterion["query"])["function"]
        assert loaded["type"] == "load_text_content"
        query = (INFRA / "app" / loaded["parameters"]["file_path"]).read_text()
        assert text in query
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
    # Whichever key exists: a key rotation deletes `default`, after which `--query default` printed nothing.
    assert '--query "values(@)[0]" --output tsv' in command
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


# ---- azd version, bounds, cloud suffix, the documents' resource group, operator roles, VNet mode ----

# azd's changelog: 1.15 stops an unset ${VAR} from replacing a Bicep default with "", 1.18 packages by
# .funcignore, 1.24.1 makes `azd down` delete only the resource groups the deployment created (before, it
# also deleted an existing destination account's group, documents and all).
AZD_FLOOR = (1, 24, 1)
# Hard-coded endpoint suffixes of Azure's clouds: the deployment must take them from environment().
CLOUD_SUFFIXES = re.compile(
    r"core\.windows\.net|core\.chinacloudapi\.cn|core\.usgovcloudapi\.net|core\.cloudapi\.de|"
    r"database\.windows\.net|vault\.azure\.net|azurewebsites\.net",
    re.IGNORECASE,
)


def test_azure_yaml_requires_an_azd_that_keeps_defaults_packages_by_funcignore_and_spares_existing_groups() -> None:
    config = yaml.safe_load((ROOT / "azure.yaml").read_text())
    required = config["requiredVersions"]["azd"]
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)\.(\d+)", required.strip())
    assert match, f"azure.yaml: requiredVersions.azd {required!r} is not a plain '>= x.y.z' floor"
    floor = tuple(int(part) for part in match.groups())
    assert floor >= (1, 18, 0), "azd before 1.18 ignores .funcignore (and before 1.15 empties unset parameters)"
    assert floor >= AZD_FLOOR, "azd before 1.24.1 deletes an existing destination account's resource group"


def test_parameter_bounds_scale_floor_and_the_receivers_reconcile_cap() -> None:
    params = bicep("main.bicep")["parameters"]
    # Flex Consumption's plan page gives 40 as the lowest maximumInstanceCount (Microsoft's samples: @minValue(40)).
    scale = params["maximumInstanceCount"]
    assert decorator(scale, "min_value") == 40
    assert decorator(scale, "max_value") == 1000
    assert 40 <= scale["default"] <= 1000
    # The receiver refuses RECONCILE_AFTER_MINUTES above a week: Bicep refuses it first, not the first request.
    reconcile = params["reconcileAfterMinutes"]
    [cap] = [
        m.le for m in Settings.model_fields["reconcile_after_minutes"].metadata if isinstance(m, annotated_types.Le)
    ]
    assert cap == 7 * 24 * 60
    assert decorator(reconcile, "max_value") == cap
    assert decorator(reconcile, "min_value") == 0
    assert 0 <= reconcile["default"] <= cap


def test_no_hard_coded_cloud_suffix_in_bicep() -> None:
    for rel in BICEP_FILES:
        for number, line in enumerate((INFRA / rel).read_text().splitlines(), 1):
            match = CLOUD_SUFFIXES.search(line)
            assert match is None, f"infra/{rel}:{number}: {match.group(0)!r}: use environment().suffixes"
    # The default source hosts are the blob endpoints of whatever cloud this is deployed to.
    default = bicep("main.bicep")["parameters"]["allowedSourceHosts"]["default"]
    assert default == "*.blob.${environment().suffixes.storage}"
    assert evaluate("main.bicep", default, {}) == "*.blob.core.windows.net"
    # The private DNS zones too.
    zones = variable("app/network.bicep", "zoneNames")
    assert zones == {
        "blob": "privatelink.blob.${environment().suffixes.storage}",
        "queue": "privatelink.queue.${environment().suffixes.storage}",
    }


def test_the_check_above_catches_a_hard_coded_suffix() -> None:
    assert CLOUD_SUFFIXES.search("param allowedSourceHosts string = '*.blob.core.windows.net'")
    assert not CLOUD_SUFFIXES.search("param allowedSourceHosts string = '*.blob.${environment().suffixes.storage}'")


def main_value(expr: object, **given: object) -> object:
    """A main.bicep expression's value for the given parameters (else the defaults)."""
    params: dict[str, object] = {"environmentName": "dev", "location": "westeurope", **given}
    return evaluate("main.bicep", expr, params)


def scope_group(module: str) -> object:
    """The resource group a main.bicep module is deployed to: `rg`, or the name inside resourceGroup(...)."""
    config = bicep("main.bicep")["modules"][module]["config"]
    scope = (config["config"] if "condition" in config else config)["scope"]
    if isinstance(scope, dict) and scope.get("function", {}).get("type") == "resource_group":
        parameters = scope["function"]["parameters"]
        assert parameters["subscription_id"] is None  # this subscription
        return parameters["resource_group_name"]
    return scope


def test_the_documents_live_in_a_resource_group_the_template_never_creates() -> None:
    main = bicep("main.bicep")
    # The template creates one resource group, the app's: `azd down` deletes only that one.
    groups = resources("main.bicep", "Microsoft.Resources/resourceGroups")
    assert list(groups) == ["rg"]
    assert unwrap(groups["rg"]["config"])[1]["name"] != "destinationRgName"
    # A new account and the container + role go to the documents' group, named, never declared here.
    for module in ("destinationAccount", "destination"):
        assert scope_group(module) == "destinationRgName", module
    assert main_value("destinationRgName") == "rg-dev-documents"  # infra/hooks/destination-group.sh's default
    assert main_value("destinationRgName", destinationResourceGroupName="rg-customer") == "rg-customer"
    assert main_value("destinationRgName", destinationStorageAccountName="st1", destinationResourceGroupName="g") == "g"
    assert main_value("destinationAccountName", destinationStorageAccountName="stcustomer") == "stcustomer"
    # Everything else is in the app's group (a private endpoint of the account too: it goes with the app).
    for module in main["modules"]:
        if module not in ("destinationAccount", "destination"):
            assert scope_group(module) == "rg", module
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert azd["destinationResourceGroupName"]["value"] == "${DESTINATION_RESOURCE_GROUP_NAME}"
    assert azd["destinationStorageAccountName"]["value"] == "${DESTINATION_STORAGE_ACCOUNT_NAME}"
    outputs = main["outputs"]
    assert outputs["DESTINATION_RESOURCE_GROUP"]["value"] == "destinationRgName"
    assert outputs["DESTINATION_STORAGE_ACCOUNT"]["value"] == "destinationAccountName"


def test_the_delete_lock_is_an_option_off_by_default() -> None:
    rel = "app/destination-access.bicep"
    [lock] = resources(rel, "Microsoft.Authorization/locks").values()
    condition, config = unwrap(lock["config"])
    assert config["scope"] == "account"
    assert only(rel, ACCOUNT)["name"] == "accountName"
    assert config["properties"]["level"] == "CanNotDelete"
    assert "infra/delete-documents.sh" in config["properties"]["notes"]
    assert evaluate(rel, condition, {"lockAccount": True}) is True
    assert evaluate(rel, condition, {"lockAccount": False}) is False
    assert bicep("main.bicep")["parameters"]["protectDestinationAccount"]["default"] is False
    assert module_params("main.bicep", "destination")["lockAccount"] == "protectDestinationAccount"
    # azd's environment records the lock's name (DESTINATION_LOCK_NAME), and the teardown page names it.
    outputs = bicep("main.bicep")["outputs"]
    assert accessor(outputs["DESTINATION_LOCK_NAME"]["value"]) == ["destination", "outputs", "lockName"]
    assert variable(rel, config["name"]) in (ROOT / "docs" / "teardown.md").read_text()
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert azd["protectDestinationAccount"]["value"] == "${PROTECT_DESTINATION_ACCOUNT}"


def test_the_operator_gets_the_roles_ops_needs_only_when_azd_names_them() -> None:
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert azd["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"  # azd fills it with the signed-in principal
    assert bicep("main.bicep")["parameters"]["principalId"]["default"] == ""
    for module in ("destination", "hostStorage"):
        assert module_params("main.bicep", module)[OPERATOR_PARAM] == "principalId"
    # Which roles, conditional on what: test_roles_are_exactly_the_intended_ones_at_the_intended_scopes.
    operator = {(rel, role) for rel, role, _, who in EXPECTED_ROLES if who == "operator"}
    assert operator == {
        ("app/destination-access.bicep", "Storage Blob Data Owner"),  # find, check, reconcile, export
        ("app/host-storage.bicep", "Storage Queue Data Contributor"),  # replay-poison
        ("app/host-storage.bicep", "Storage Blob Data Reader"),  # the postprovision wait for roles
    }


def test_host_storage_takes_no_trusted_service_exception_in_vnet_mode() -> None:
    rel = "app/host-storage.bicep"
    acls = only(rel, ACCOUNT)["properties"]["networkAcls"]
    assert evaluate(rel, acls["bypass"], {"privateNetworking": True}) == "None"
    assert evaluate(rel, acls["defaultAction"], {"privateNetworking": True}) == "Deny"
    public = only(rel, ACCOUNT)["properties"]["publicNetworkAccess"]
    assert evaluate(rel, public, {"privateNetworking": True}) == "Disabled"
    # Without VNet mode the default action is Allow, so bypass changes nothing there.
    assert evaluate(rel, acls["defaultAction"], {"privateNetworking": False}) == "Allow"
    assert module_params("main.bicep", "hostStorage")["privateNetworking"] == "vnetEnabled"


# String parameters whose empty value is a valid choice of its own (no tags at all).
EMPTY_IS_A_CHOICE = {"tagFields"}


def test_an_empty_azd_variable_cannot_silently_replace_a_default() -> None:
    """azd before 1.15 passed "" for an unset ${VAR}; azure.yaml refuses those, and if one slipped through
    anyway ARM would refuse "" rather than deploy a receiver that answers `misconfigured`."""
    params = bicep("main.bicep")["parameters"]
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    for name in azd:
        param = params[name]
        if param["type"] != "string" or "default" not in param or param["default"] == "" or name in EMPTY_IS_A_CHOICE:
            continue  # int and bool refuse "" by type; "" already means the default; or "" is a choice
        allowed = decorator(param, "allowed")
        min_length = decorator(param, "min_length")
        refuses_empty = (isinstance(min_length, int) and min_length >= 1) or (
            isinstance(allowed, list) and "" not in allowed
        )
        assert refuses_empty, f"{name}: an empty ${{VAR}} would replace {param['default']!r}: add @minLength(1)"
    for name in ("blobNameTemplate", "allowedSourceHosts", "reconcileSchedule", "destinationContainer"):
        assert isinstance(decorator(params[name], "min_length"), int), name


# ---- the hooks and infra/delete-documents.sh, run with a stand-in `az` (and `azd`) on PATH ----

HOOKS = INFRA / "hooks"
# Tools the scripts call besides az/azd: linked from this machine into the stand-ins' PATH.
TOOLS = ("tr", "printf", "sed", "tail", "dirname", "sh", "cat")

FAKE_AZ = """#!/bin/sh
echo "$*" >> "$AZ_CALLS"
case "$*" in
  "provider show"*) echo "$AZ_STATE" ;;
esac
exit 0
"""


def fake_path(tmp_path: Path, **programs: str) -> Path:
    """A bin directory holding the given stand-in programs (name -> shell script) and the usual tools."""
    bin_dir = tmp_path / "bin"
    if bin_dir.exists():
        shutil.rmtree(bin_dir)
    bin_dir.mkdir()
    for name, body in programs.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    for tool in TOOLS:
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    return bin_dir


def run_script(
    script: Path, bin_dir: Path, env: dict[str, str], stdin: str = "", args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    sh = shutil.which("sh")
    assert sh
    return subprocess.run(
        [sh, str(script), *args],
        env={"PATH": str(bin_dir), **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def calls_of(tmp_path: Path) -> list[str]:
    calls = tmp_path / "calls.txt"
    return calls.read_text().splitlines() if calls.exists() else []


def hook(event: str) -> tuple[Path, Path]:
    """azure.yaml's (posix script, windows script) for an azd event; both exist."""
    config = yaml.safe_load((ROOT / "azure.yaml").read_text())
    entry = config["hooks"][event]
    assert entry["posix"]["shell"] == "sh" and entry["windows"]["shell"] == "pwsh"
    posix, windows = (ROOT / entry["posix"]["run"]).resolve(), (ROOT / entry["windows"]["run"]).resolve()
    assert posix.is_file() and windows.is_file(), event
    return posix, windows


def run_hook(
    tmp_path: Path, vnet: str | None, state: str = "NotRegistered", with_az: bool = True
) -> tuple[str, list[str]]:
    bin_dir = fake_path(tmp_path, **({"az": FAKE_AZ} if with_az else {}))
    (tmp_path / "calls.txt").write_text("")
    env = {"AZ_CALLS": str(tmp_path / "calls.txt"), "AZ_STATE": state, "AZURE_SUBSCRIPTION_ID": "sub-1"}
    if vnet is not None:
        env["VNET_ENABLED"] = vnet
    run = run_script(HOOKS / "register-microsoft-app.sh", bin_dir, env)
    assert run.returncode == 0, run.stderr  # it never stops `azd up`
    return run.stdout + run.stderr, calls_of(tmp_path)


def test_the_preprovision_hook_runs_the_provider_check_then_the_documents_group() -> None:
    posix, windows = hook("preprovision")
    lines = [line for line in posix.read_text().splitlines() if line.startswith("sh ")]
    assert lines == ['sh "$here/register-microsoft-app.sh"', 'sh "$here/destination-group.sh"']
    text = windows.read_text()
    assert text.index("register-microsoft-app.ps1") < text.index("destination-group.ps1")
    for script in ("register-microsoft-app", "destination-group", "wait-for-roles", "remove-destination-role"):
        assert (HOOKS / f"{script}.sh").is_file() and (HOOKS / f"{script}.ps1").is_file(), script


def test_the_hook_registers_microsoft_app_only_in_vnet_mode(tmp_path: Path) -> None:
    for vnet in (None, "false", ""):
        _, calls = run_hook(tmp_path, vnet)
        assert calls == [], vnet
    _, calls = run_hook(tmp_path, "True")
    assert calls == [
        "provider show --namespace Microsoft.App --subscription sub-1 --query registrationState --output tsv",
        "provider register --namespace Microsoft.App --subscription sub-1 --wait",
    ]
    _, calls = run_hook(tmp_path, "true", state="Registered")
    assert calls == [
        "provider show --namespace Microsoft.App --subscription sub-1 --query registrationState --output tsv"
    ]
    said, calls = run_hook(tmp_path, "true", with_az=False)
    assert calls == []
    assert "az provider register --namespace Microsoft.App --subscription sub-1 --wait" in said


# -- the documents' resource group (preprovision) --

GROUP_AZ = """#!/bin/sh
echo "az $*" >> "$AZ_CALLS"
case "$*" in
  "group exists"*) echo "$AZ_GROUP_EXISTS" ;;
esac
exit 0
"""
FAKE_AZD = """#!/bin/sh
echo "azd $*" >> "$AZ_CALLS"
exit 0
"""


def run_group_hook(
    tmp_path: Path, exists: str = "false", with_az: bool = True, env: dict[str, str] | None = None, **extra: str
) -> tuple[int, str, list[str]]:
    programs = {"azd": FAKE_AZD, **({"az": GROUP_AZ} if with_az else {})}
    bin_dir = fake_path(tmp_path, **programs)
    (tmp_path / "calls.txt").write_text("")
    base = {
        "AZ_CALLS": str(tmp_path / "calls.txt"),
        "AZ_GROUP_EXISTS": exists,
        "AZURE_ENV_NAME": "sd-receiver",
        "AZURE_LOCATION": "westeurope",
        "AZURE_SUBSCRIPTION_ID": "sub-1",
    }
    run = run_script(HOOKS / "destination-group.sh", bin_dir, base | (env or {}) | extra)
    return run.returncode, run.stdout + run.stderr, calls_of(tmp_path)


def test_a_new_account_gets_its_documents_group_created_once_before_the_deployment(tmp_path: Path) -> None:
    code, said, calls = run_group_hook(tmp_path, exists="false")
    assert code == 0, said
    assert calls == [
        "az group exists --name rg-sd-receiver-documents --subscription sub-1",
        "az group create --name rg-sd-receiver-documents --location westeurope --subscription sub-1"
        " --tags purpose=smartdocumentor-documents created-for=sd-receiver --output none",
        "azd env set DESTINATION_RESOURCE_GROUP_NAME rg-sd-receiver-documents",
    ]
    # The same default as main.bicep, so the deployment finds the group even without `azd env set`.
    assert main_value("destinationRgName", environmentName="sd-receiver") == "rg-sd-receiver-documents"
    # Never tagged azd-env-name: it is not one of the groups this environment's deployment owns.
    assert "azd-env-name" not in (HOOKS / "destination-group.sh").read_text().replace("tagged azd-env-name", "")
    # Already there (the second `azd up`, or after `azd down`): nothing created.
    code, said, calls = run_group_hook(tmp_path, exists="true")
    assert code == 0 and "exists" in said
    assert [call for call in calls if "group create" in call] == []
    # A name of the user's choosing is used as given, and not written back.
    code, _, calls = run_group_hook(tmp_path, exists="false", DESTINATION_RESOURCE_GROUP_NAME="rg-archive")
    assert code == 0
    assert calls[1].startswith("az group create --name rg-archive ") and not any("env set" in c for c in calls)


def test_an_existing_account_needs_its_existing_group_and_nothing_is_created(tmp_path: Path) -> None:
    existing = {"DESTINATION_STORAGE_ACCOUNT_NAME": "stcustomer", "DESTINATION_RESOURCE_GROUP_NAME": "rg-customer"}
    code, said, calls = run_group_hook(tmp_path, exists="true", env=existing)
    assert code == 0, said
    assert calls == ["az group exists --name rg-customer --subscription sub-1"]
    code, said, calls = run_group_hook(tmp_path, exists="false", env=existing)
    assert code == 1 and "rg-customer" in said and "does not exist" in said
    assert not any("create" in call for call in calls)
    # The account without its group: refused, with the command that finds the group.
    code, said, calls = run_group_hook(tmp_path, DESTINATION_STORAGE_ACCOUNT_NAME="stcustomer")
    assert code == 1 and calls == []
    assert "az storage account show --name stcustomer --query resourceGroup" in said


def test_the_documents_group_is_never_the_apps_own(tmp_path: Path) -> None:
    for env in (
        {"DESTINATION_RESOURCE_GROUP_NAME": "RG-sd-receiver"},  # the app's default name, any case
        {"DESTINATION_RESOURCE_GROUP_NAME": "rg-app", "AZURE_RESOURCE_GROUP_NAME": "rg-app"},
    ):
        code, said, calls = run_group_hook(tmp_path, env=env)
        assert code == 1 and "azd down deletes" in said, env
        assert calls == [], env


def test_the_documents_group_hook_stops_azd_up_when_it_cannot_make_sure(tmp_path: Path) -> None:
    code, said, calls = run_group_hook(tmp_path, with_az=False)
    assert code == 1 and "az group create --name rg-sd-receiver-documents" in said and calls == []
    code, said, _ = run_group_hook(tmp_path, exists="")  # az answered nothing: not signed in
    assert code == 1 and "az login" in said
    code, said, _ = run_group_hook(tmp_path, AZURE_ENV_NAME="")
    assert code == 1 and "AZURE_ENV_NAME" in said


# -- the bounded wait for roles (postprovision) --

# Fails the data-plane probe $AZ_FAILS times (a counter file), then succeeds; AZ_FAILS=never: always fails.
ROLES_AZ = """#!/bin/sh
echo "az $*" >> "$AZ_CALLS"
case "$*" in
  "storage blob list"*)
    count=$(cat "$AZ_COUNTER" 2>/dev/null || echo 0)
    count=$((count + 1))
    echo "$count" > "$AZ_COUNTER"
    if [ "$AZ_FAILS" = never ] || [ "$count" -le "$AZ_FAILS" ]; then
      echo "ERROR: This request is not authorized to perform this operation using this permission." >&2
      echo "ErrorCode:AuthorizationPermissionMismatch" >&2
      exit 1
    fi ;;
esac
exit 0
"""
# Records each sleep instead of sleeping: the test never waits on the real clock.
FAKE_SLEEP = """#!/bin/sh
echo "sleep $*" >> "$AZ_CALLS"
"""


def run_wait(tmp_path: Path, fails: str, **env: str) -> tuple[int, str, str, list[str]]:
    bin_dir = fake_path(tmp_path, az=ROLES_AZ, fakesleep=FAKE_SLEEP)
    (tmp_path / "calls.txt").write_text("")
    (tmp_path / "counter").unlink(missing_ok=True)
    base = {
        "AZ_CALLS": str(tmp_path / "calls.txt"),
        "AZ_COUNTER": str(tmp_path / "counter"),
        "AZ_FAILS": fails,
        "AZURE_PRINCIPAL_ID": "00000000-0000-0000-0000-000000000001",
        "HOST_STORAGE_ACCOUNT": "sthostabc",
        "DEPLOYMENT_CONTAINER": "app-package-func-abc",
        "ROLE_WAIT_SLEEP": "fakesleep",
    }
    posix, _ = hook("postprovision")
    run = run_script(posix, bin_dir, base | env)
    return run.returncode, run.stdout, run.stderr, calls_of(tmp_path)


PROBE = (
    "az storage blob list --auth-mode login --account-name sthostabc --container-name app-package-func-abc"
    " --num-results 1 --only-show-errors --output none"
)


def test_the_wait_for_roles_retries_until_the_deploying_identity_is_allowed(tmp_path: Path) -> None:
    code, out, err, calls = run_wait(tmp_path, fails="7")
    assert code == 0, err
    assert calls == [PROBE, "sleep 10"] * 7 + [PROBE]
    assert "in force after about 70 s" in out
    # A line when it starts waiting and then every 30 s, not one per try.
    waiting = [line for line in out.splitlines() if "not in force yet" in line]
    assert [line.split("(")[1].split(" s so far")[0] for line in waiting] == ["0", "30", "60"]
    # Allowed at once: one probe, no sleep.
    code, out, _, calls = run_wait(tmp_path, fails="0")
    assert (code, calls) == (0, [PROBE])
    assert "in force (the package container sthostabc/app-package-func-abc can be read)" in out


def test_the_wait_for_roles_stops_by_itself_after_ten_minutes_with_what_to_do(tmp_path: Path) -> None:
    code, out, err, calls = run_wait(tmp_path, fails="never")
    assert code == 1
    assert calls.count("sleep 10") == 60 and calls.count(PROBE) == 61  # 600 s in 10 s steps, then one last try
    assert "gave up after 600 s" in err and "run azd deploy in a few minutes" in err
    assert "AuthorizationPermissionMismatch" in err  # the last answer, as az gave it
    assert len([line for line in out.splitlines() if "not in force yet" in line]) == 20  # every 30 s
    # The bound and the step are settings (whole seconds only).
    code, _, _, calls = run_wait(
        tmp_path, fails="never", ROLE_WAIT_TIMEOUT_SECONDS="30", ROLE_WAIT_INTERVAL_SECONDS="15"
    )
    assert code == 1 and calls == [PROBE, "sleep 15", PROBE, "sleep 15", PROBE]
    code, _, err, calls = run_wait(tmp_path, fails="never", ROLE_WAIT_TIMEOUT_SECONDS="ten minutes")
    assert code == 2 and calls == [] and "whole seconds" in err


def test_the_wait_for_roles_is_skipped_where_it_cannot_probe(tmp_path: Path) -> None:
    for env in ({"VNET_ENABLED": "true"}, {"AZURE_PRINCIPAL_ID": ""}, {"HOST_STORAGE_ACCOUNT": ""}):
        code, out, _, calls = run_wait(tmp_path, fails="never", **env)
        assert (code, calls) == (0, []), env
        assert "skipped" in out and "run azd deploy again" in out, env


def test_the_package_container_is_what_the_wait_for_roles_probes() -> None:
    outputs = bicep("main.bicep")["outputs"]
    assert outputs["DEPLOYMENT_CONTAINER"]["value"] == "deploymentContainerName"
    assert accessor(outputs["HOST_STORAGE_ACCOUNT"]["value"]) == ["hostStorage", "outputs", "name"]
    assert module_params("main.bicep", "hostStorage")["deploymentContainerName"] == "deploymentContainerName"
    # The operator's read role is on that container (test_roles_are_exactly_...), granted in the same
    # deployment as the app's roles on the account.
    [reader] = [
        unwrap(res["config"])[1]
        for res in resources("app/host-storage.bicep", "Microsoft.Authorization/roleAssignments").values()
        if unwrap(res["config"])[1]["properties"]["principalId"] == OPERATOR_PARAM
        and "Reader" in str(unwrap(res["config"])[1]["properties"]["roleDefinitionId"])
    ]
    assert reader["scope"] == "deploymentContainer"


# -- the app's role on the documents, removed before `azd down` (predown) --

ROLE_AZ = """#!/bin/sh
echo "az $*" >> "$AZ_CALLS"
exit "${AZ_EXIT:-0}"
"""


def test_the_predown_hook_removes_the_apps_role_on_the_documents_and_never_stops_azd_down(tmp_path: Path) -> None:
    posix, _ = hook("predown")
    role = "/subscriptions/s/resourceGroups/rg-d/providers/Microsoft.Authorization/roleAssignments/r1"
    for az_exit, said in (("0", "removed"), ("1", "could not remove it")):
        bin_dir = fake_path(tmp_path, az=ROLE_AZ)
        (tmp_path / "calls.txt").write_text("")
        env = {"AZ_CALLS": str(tmp_path / "calls.txt"), "AZ_EXIT": az_exit, "DESTINATION_ROLE_ASSIGNMENT_ID": role}
        run = run_script(posix, bin_dir, env)
        assert run.returncode == 0 and said in run.stdout + run.stderr
        assert calls_of(tmp_path) == [f"az role assignment delete --ids {role} --only-show-errors --output none"]
    (tmp_path / "calls.txt").write_text("")
    run = run_script(posix, fake_path(tmp_path, az=ROLE_AZ), {"AZ_CALLS": str(tmp_path / "calls.txt")})
    assert run.returncode == 0 and calls_of(tmp_path) == []
    assert bicep("main.bicep")["outputs"]["DESTINATION_ROLE_ASSIGNMENT_ID"]


# -- infra/delete-documents.sh: the one command that deletes the documents too --

DELETE_SCRIPT = INFRA / "delete-documents.sh"
ACCOUNT_ID = "/subscriptions/s/resourceGroups/rg-sd-documents/providers/Microsoft.Storage/storageAccounts/stdocsabc"
DELETE_AZ = """#!/bin/sh
echo "az $*" >> "$AZ_CALLS"
case "$*" in
  "storage account show"*) [ -n "$AZ_ACCOUNT_ID" ] && echo "$AZ_ACCOUNT_ID" ;;
  "storage container-rm list"*) echo smartdocumentor ;;
  "lock list"*) [ -n "$AZ_LOCK" ] && echo "$AZ_LOCK" ;;
  "group show"*) echo "$AZ_PURPOSE" ;;
  "resource list"*) [ -n "$AZ_OTHERS" ] && echo "$AZ_OTHERS" ;;
esac
exit 0
"""


def run_delete(
    tmp_path: Path, answer: str, *args: str, others: str = "", purpose: str = "smartdocumentor-documents", **env: str
) -> tuple[int, str, list[str]]:
    bin_dir = fake_path(tmp_path, az=DELETE_AZ)
    (tmp_path / "calls.txt").write_text("")
    base = {
        "AZ_CALLS": str(tmp_path / "calls.txt"),
        "AZ_ACCOUNT_ID": ACCOUNT_ID,
        "AZ_LOCK": ACCOUNT_ID + "/providers/Microsoft.Authorization/locks/keep-archived-documents",
        "AZ_PURPOSE": purpose,
        "AZ_OTHERS": others,
        "DESTINATION_STORAGE_ACCOUNT": "stdocsabc",
        "DESTINATION_RESOURCE_GROUP": "rg-sd-documents",
    }
    run = run_script(DELETE_SCRIPT, bin_dir, base | env, stdin=answer + "\n", args=args)
    return run.returncode, run.stdout + run.stderr, calls_of(tmp_path)


def deletions(calls: list[str]) -> list[str]:
    return [call for call in calls if " delete " in f"{call} "]


def test_delete_documents_lists_what_it_deletes_and_asks_first(tmp_path: Path) -> None:
    code, said, calls = run_delete(tmp_path, "stdocsabc")
    assert code == 0, said
    listing = said.split("Type the account name")[0]
    for thing in (ACCOUNT_ID, "smartdocumentor", "keep-archived-documents", "resource group   rg-sd-documents"):
        assert thing in listing, thing
    assert deletions(calls) == [
        f"az lock delete --ids {ACCOUNT_ID}/providers/Microsoft.Authorization/locks/keep-archived-documents"
        " --output none",
        f"az storage account delete --ids {ACCOUNT_ID} --yes --output none",
        "az group delete --name rg-sd-documents --yes --output none",
    ]
    # Anything but the account's name: nothing deleted.
    for answer in ("", "y", "yes", "stdocs"):
        code, said, calls = run_delete(tmp_path, answer)
        assert code == 1 and "nothing deleted" in said and deletions(calls) == [], answer


def test_delete_documents_keeps_a_group_it_did_not_make_or_that_holds_more(tmp_path: Path) -> None:
    for kwargs in ({"purpose": ""}, {"others": "/subscriptions/s/resourceGroups/rg-sd-documents/providers/x/y/z"}):
        code, said, calls = run_delete(tmp_path, "stdocsabc", **kwargs)
        assert code == 0, said
        assert "kept: resource group rg-sd-documents" in said
        assert not any("group delete" in call for call in calls), kwargs
        assert any("storage account delete" in call for call in calls)


def test_delete_documents_refuses_an_empty_name(tmp_path: Path) -> None:
    for env, args in (
        ({"DESTINATION_STORAGE_ACCOUNT": ""}, ()),
        ({"DESTINATION_RESOURCE_GROUP": ""}, ()),
        ({}, ("--account", "")),
        ({}, ("--resource-group", "")),
    ):
        code, said, calls = run_delete(tmp_path, "stdocsabc", *args, **env)
        assert code == 2 and "refusing" in said, (env, args)
        assert calls == [], (env, args)
    # Names given on the command line win over azd's environment.
    code, _, calls = run_delete(tmp_path, "stother", "--account", "stother", "--resource-group", "rg-x")
    assert (
        code == 0 and calls[0] == "az storage account show --name stother --resource-group rg-x --query id --output tsv"
    )
    # An account that is not there: nothing deleted.
    code, said, calls = run_delete(tmp_path, "stdocsabc", AZ_ACCOUNT_ID="")
    assert code == 1 and "nothing deleted" in said and deletions(calls) == []


# ---- infra/VERIFY.md's queries filter on what the code emits ----

VERIFY = INFRA / "VERIFY.md"
# `Properties["receiver.x"]` (Log Analytics) or `customDimensions["receiver.x"]` (Application Insights),
# optionally inside tostring(...), compared with a string literal (or a list of them).
DIMENSION = re.compile(r'(?:Properties|customDimensions)\["(receiver\.[A-Za-z_.]+)"\]')
COMPARED = re.compile(
    r'(?:Properties|customDimensions)\["(receiver\.[A-Za-z_.]+)"\]\)?\s*(?:==|=~|!=|!~)\s*"([^"]*)"'
    r'|(?:Properties|customDimensions)\["(receiver\.[A-Za-z_.]+)"\]\)?\s*!?in~?\s*\(([^)]*)\)'
)


def receiver_string_constants() -> set[str]:
    """Every string literal in receiver/ (what its records can carry as a value)."""
    found: set[str] = set()
    for path in (ROOT / "receiver").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def emitted_dimensions() -> set[str]:
    """The customDimensions keys the receiver's records carry: `receiver.<key>` for every key of a record's
    attributes (a Record with every field set), and every literal `receiver.*` key it logs directly."""
    import dataclasses
    import typing

    from receiver import telemetry

    record = telemetry.Record(typing.get_args(telemetry.Operation)[0])
    for item in dataclasses.fields(record):
        if getattr(record, item.name) is None or item.type in ("bool", "bool | None"):
            setattr(record, item.name, True if "bool" in str(item.type) else "x")
    keys = {f"receiver.{key}" for key in record.attributes()}
    return keys | {value for value in receiver_string_constants() if value.startswith("receiver.")}


def verify_kql() -> list[str]:
    text = VERIFY.read_text()
    blocks = re.findall(r"```kusto\n(.*?)```", text, re.DOTALL)
    return blocks + [span for span in re.findall(r"`([^`\n]+)`", text) if DIMENSION.search(span)]


def test_verify_md_queries_filter_on_names_the_code_emits() -> None:
    from typing import get_args

    from receiver.telemetry import Operation

    queries = verify_kql()
    assert queries, "infra/VERIFY.md has no KQL?"
    emitted = emitted_dimensions()
    values = receiver_string_constants()
    operations = set(get_args(Operation))
    compared = 0
    for query in queries:
        for key in DIMENSION.findall(query):
            assert key in emitted, f"infra/VERIFY.md reads {key}, which no record carries: {sorted(emitted)}"
        for key_1, literal, key_2, listed in COMPARED.findall(query):
            key, literals = (key_1, [literal]) if key_1 else (key_2, re.findall(r'"([^"]*)"', listed))
            for value in literals:
                compared += 1
                allowed = operations if key == "receiver.operation" else values
                assert value in allowed, f"infra/VERIFY.md filters {key} on {value!r}, which the code never emits"
    assert compared >= 1
    # The reconciliation's records say "reconciliation" (not "reconcile"), and VERIFY.md asks for that.
    assert "reconciliation" in operations
    assert any('Properties["receiver.operation"]) == "reconciliation"' in query for query in queries)


def test_the_check_above_catches_a_name_the_code_does_not_emit() -> None:
    wrong = 'AppTraces | where Properties["receiver.operation"] == "reconcile"'
    [(key, value, _, _)] = COMPARED.findall(wrong)
    from typing import get_args

    from receiver.telemetry import Operation

    assert key == "receiver.operation" and value not in get_args(Operation)
    assert "receiver.noSuchKey" not in emitted_dimensions()
    assert {
        "receiver.operation",
        "receiver.outcome",
        "receiver.taskId",
        "receiver.poison_depth",
    } <= emitted_dimensions()
