"""Managed identity: DESTINATION_ACCOUNT_URL builds an identity-based client; token failures are misconfigured."""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import DefaultAzureCredential
from azure.storage.blob.aio import BlobServiceClient, ExponentialRetry

from devtools.azurite import free_port
from receiver.runtime import Runtime
from receiver.settings import Settings
from receiver.storage import Misconfigured
from receiver.store import AzureStorage


class NoIdentity:
    """A token credential that fails the way DefaultAzureCredential does where no identity exists."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> NoIdentity:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


async def test_account_url_uses_default_azure_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DESTINATION_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("DESTINATION_ACCOUNT_URL", "https://customeracct.blob.core.windows.net/")
    runtime = Runtime()
    store = runtime.store()  # builds the client; no network until the first call
    try:
        assert isinstance(store, AzureStorage)
        assert isinstance(store._credential, DefaultAzureCredential)
        assert store.account == "customeracct"
        assert store.url("ws/task/a b.pdf") == (
            "https://customeracct.blob.core.windows.net/smartdocumentor/ws/task/a%20b.pdf"
        )
    finally:
        await runtime.close()


async def test_a_missing_identity_is_misconfigured_with_the_fix() -> None:
    # https on a closed loopback port: the token is asked for before any connection is made.
    service = BlobServiceClient(
        f"https://127.0.0.1:{free_port()}/customeracct",
        credential=NoIdentity(),
        retry_policy=ExponentialRetry(retry_total=0),  # the classification is under test, not the backoff
    )
    store = AzureStorage(service, "smartdocumentor")
    try:
        with pytest.raises(Misconfigured) as caught:
            await store.copy_from_url(
                "a.pdf", "https://x.blob.core.windows.net/c/a.pdf?sig=s", if_match=None, metadata={}, tags={}
            )
        assert "managed identity" in caught.value.message
        assert "DESTINATION_CONNECTION_STRING" in caught.value.message
    finally:
        await store.close()


@pytest.mark.parametrize(("proxy", "expected"), [(None, False), ("http://127.0.0.1:9", True)])
async def test_proxy_settings_are_read_only_when_a_proxy_is_configured(
    monkeypatch: pytest.MonkeyPatch, proxy: str | None, expected: bool
) -> None:
    # Reading them costs ~1 ms of CPU per request (make bench); a configured proxy must still be used.
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    if proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy)
    store = AzureStorage.open(Settings(destination_connection_string="UseDevelopmentStorage=true"))
    try:
        assert store._service._pipeline._transport._use_env_settings is expected  # type: ignore[attr-defined]
    finally:
        await store.close()
