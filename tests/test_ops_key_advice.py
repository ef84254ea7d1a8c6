"""Storage problems the operator can fix exit 3 with the fix named: a wrong or malformed account key
gets advice about the key (not roles or sign-in), a wrong container is named (never created), an
unreachable account names what to check."""

from __future__ import annotations

import base64
import io
from typing import Any

from azure.storage.blob import BlobServiceClient

from devtools.azurite import CUSTOMER_ACCOUNT, Azurite, connection_string
from ops.cli import run
from receiver.storage import Misconfigured, Unavailable
from sim.memstore import MemoryStorage

from .test_ops import Ops

KEY = base64.b64encode(b"not-the-customer-account-key-at-all!!").decode()


class Refusing(MemoryStorage):
    """A store whose every read and listing is refused with ``code``."""

    def __init__(self, code: str) -> None:
        super().__init__()
        self.code = code

    def _enter(self, op: str, name: str) -> None:
        raise Misconfigured("Azure Storage refused the request.", code=self.code, status=403)


async def _ran(storage: Any, *argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await run(list(argv), environ={}, out=out, err=err, storage=storage, settings=Ops().world.settings)
    return code, out.getvalue() + err.getvalue()


async def test_a_wrong_account_key_is_named_as_such() -> None:
    code, said = await _ran(Refusing("AuthenticationFailed"), "pending")
    assert code == 3
    assert "did not accept the account key" in said and "Access keys" in said, said
    assert "Storage Blob Data Owner" not in said  # roles do not help a wrong key


async def test_a_refused_identity_still_gets_the_role_advice() -> None:
    code, said = await _ran(Refusing("AuthorizationPermissionMismatch"), "find", "--task", "t")
    assert code == 3 and "Storage Blob Data Owner" in said and "account key" not in said


async def test_a_malformed_account_key_is_named_as_malformed_not_as_an_identity_problem() -> None:
    malformed = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=not*base64!;EndpointSuffix=core.windows.net"
    for argv in (
        ["pending", "--connection-string", malformed],
        ["replay-poison", "--host-connection-string", malformed],
    ):
        out, err = io.StringIO(), io.StringIO()
        assert await run(argv, environ={}, out=out, err=err) == 3
        said = out.getvalue() + err.getvalue()
        assert "account key" in said and "malformed" in said and "az login" not in said, said
        assert "not*base64!" not in said


async def test_an_invalid_connection_string_is_not_repeated() -> None:
    out, err = io.StringIO(), io.StringIO()
    code = await run(["pending", "--connection-string", f"AccountKey={KEY};nonsense"], environ={}, out=out, err=err)
    assert code == 3 and "not a valid storage connection string" in err.getvalue()
    assert KEY not in err.getvalue() + out.getvalue()


async def test_a_container_that_does_not_exist_is_named_and_never_created(azurite: Azurite) -> None:
    """On Azurite: a mistyped --container is exit 3 naming it, for a read and for a repair alike."""
    for argv in (["pending"], ["check", "--task", "t-1", "--workspace", "w-1", "--repair"]):
        out, err = io.StringIO(), io.StringIO()
        options = ["--connection-string", azurite.customer, "--container", "no-such-container"]
        code = await run([*argv, *options], environ={}, out=out, err=err)
        said = out.getvalue() + err.getvalue()
        assert code == 3, said
        assert "'no-such-container' does not exist" in said and "--container" in said, said
        assert "no reconciliation run" not in said  # not mistaken for a dead timer
    service = BlobServiceClient.from_connection_string(azurite.customer)
    assert "no-such-container" not in [item.name for item in service.list_containers()]


async def test_a_wrong_key_on_azurite_is_named_as_the_key_not_as_a_role(azurite: Azurite) -> None:
    """The emulator answers a wrong key with 403 AuthorizationFailure (the service: AuthenticationFailed)."""
    wrong = connection_string(CUSTOMER_ACCOUNT, KEY, azurite.blob_port)
    out, err = io.StringIO(), io.StringIO()
    code = await run(["find", "--task", "t-1", "--connection-string", wrong], environ={}, out=out, err=err)
    said = out.getvalue() + err.getvalue()
    assert code == 3, said
    assert "account key" in said and "Access keys" in said, said
    assert "Storage Blob Data Owner" not in said and "az login" not in said, said
    assert KEY not in said


class Unreachable(MemoryStorage):
    def _enter(self, op: str, name: str) -> None:
        raise Unavailable("Azure Storage at acct could not be reached (ServiceRequestError).")


async def test_unreachable_storage_names_what_to_check_next() -> None:
    code, said = await _ran(Unreachable(), "failed")
    assert code == 3, said
    assert "could not be reached" in said and "network path" in said and "run the command again" in said, said


async def test_a_refused_sas_connection_string_gets_advice_about_the_sas() -> None:
    sas = "BlobEndpoint=https://acct.blob.core.windows.net;SharedAccessSignature=sv=2024-11-04&sp=rl&sig=SECRETSIG"
    out, err = io.StringIO(), io.StringIO()
    storage = Refusing("AuthorizationFailure")
    settings = Ops().world.settings
    code = await run(
        ["pending"],
        environ={"DESTINATION_CONNECTION_STRING": sas},
        out=out,
        err=err,
        storage=storage,
        settings=settings,
    )
    said = out.getvalue() + err.getvalue()
    assert code == 3 and "SAS in the connection string" in said and "Make a new one" in said, said
    assert "Storage Blob Data Owner" not in said and "SECRETSIG" not in said


class NoToken(MemoryStorage):
    def _enter(self, op: str, name: str) -> None:
        raise Misconfigured("The function could not get a token for acct (managed identity): enable the identity.")


async def test_no_token_on_an_operators_machine_says_sign_in_not_managed_identity() -> None:
    code, said = await _ran(NoToken(), "find", "--task", "t-1")
    assert code == 3 and "az login" in said and "managed identity" not in said, said


async def test_a_file_link_given_as_a_connection_string_is_named_as_a_link() -> None:
    link = "https://exports.blob.core.windows.net/c/file.pdf?sv=2024-11-04&sig=SECRETSIG"
    out, err = io.StringIO(), io.StringIO()
    assert await run(["pending", "--connection-string", link], environ={}, out=out, err=err) == 3
    said = out.getvalue() + err.getvalue()
    assert "is a link, not a connection string" in said and "--account-url" in said, said
    assert "SECRETSIG" not in said


def test_an_unreachable_account_names_the_endpoint_it_tried_and_no_url() -> None:
    from azure.core.exceptions import ServiceRequestError

    from receiver.store import Call, classify

    failure = ServiceRequestError("Cannot connect to host 127.0.0.1:10999 ssl:default [Connect call failed]")
    error = classify(failure, Call("read blob"), "devstoreaccount1", "smartdocumentor")
    assert isinstance(error, Unavailable)
    assert error.message == (
        "Azure Storage at devstoreaccount1 could not be reached (ServiceRequestError, at 127.0.0.1:10999)."
    )


async def test_an_account_url_given_wins_over_a_keyed_string_in_the_environment_for_the_advice() -> None:
    keyed = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.windows.net"
    out, err = io.StringIO(), io.StringIO()
    argv = ["find", "--task", "t-1", "--account-url", "https://acct.blob.core.windows.net"]
    storage, settings = Refusing("AuthorizationPermissionMismatch"), Ops().world.settings
    code = await run(
        argv, environ={"DESTINATION_CONNECTION_STRING": keyed}, out=out, err=err, storage=storage, settings=settings
    )
    said = out.getvalue() + err.getvalue()
    assert code == 3 and "Storage Blob Data Owner" in said and "account key" not in said, said


async def test_replay_poison_is_not_stopped_by_a_container_the_app_would_create() -> None:
    ops = Ops()
    ops.world.storage.drop_container()
    ran = await ops("replay-poison", "--dry-run")
    assert ran.code == 0 and "does not exist" not in ran.out + ran.err, ran.out + ran.err


async def test_a_container_name_in_capitals_gets_its_lowercase_name_suggested() -> None:
    out, err = io.StringIO(), io.StringIO()
    code = await run(
        ["pending", "--connection-string", "UseDevelopmentStorage=true", "--container", "SmartDocumentor"],
        environ={},
        out=out,
        err=err,
    )
    assert code == 3 and "--container smartdocumentor?" in err.getvalue(), err.getvalue()
