"""A wrong account key in `python -m ops --connection-string` gets advice about the key, not about roles.

Azure answers a request signed with a wrong key 403 AuthenticationFailed. Azurite answers it 403
AuthorizationFailure (the code Azure uses for a firewall or a missing permission), so the fault proxy in
front of Azurite answers the way Azure does.
"""

from __future__ import annotations

import base64
import io

from devtools.azurite import CUSTOMER_ACCOUNT, connection_string
from ops.cli import run

from .faultproxy import FaultProxy, Rule

AZURE_WRONG_KEY = (
    "Server failed to authenticate the request. Make sure the value of Authorization header is formed "
    "correctly including the signature."
)


async def test_a_wrong_account_key_is_named_as_such(proxy: FaultProxy) -> None:
    proxy.add(Rule(lambda request: True, times=1000, status=403, code="AuthenticationFailed", message=AZURE_WRONG_KEY))
    wrong = base64.b64encode(b"not-the-customer-account-key-at-all!!").decode()
    out, err = io.StringIO(), io.StringIO()

    code = await run(
        ["pending", "--connection-string", connection_string(CUSTOMER_ACCOUNT, wrong, proxy.port)],
        environ={},
        out=out,
        err=err,
    )

    assert code == 3
    said = err.getvalue()
    assert "did not accept the account key" in said and "Access keys" in said, said
    assert "Storage Blob Data Owner" not in said  # roles do not help a wrong key
    assert wrong not in said + out.getvalue()


async def test_a_refused_identity_still_gets_the_role_advice(proxy: FaultProxy) -> None:
    proxy.add(
        Rule(
            lambda request: True,
            times=1000,
            status=403,
            code="AuthorizationPermissionMismatch",
            message="This request is not authorized to perform this operation using this permission.",
        )
    )
    err = io.StringIO()
    cs = connection_string(CUSTOMER_ACCOUNT, base64.b64encode(b"k" * 32).decode(), proxy.port)

    assert await run(["pending", "--connection-string", cs], environ={}, out=io.StringIO(), err=err) == 3
    assert "Storage Blob Data Owner" in err.getvalue() and "account key" not in err.getvalue()
