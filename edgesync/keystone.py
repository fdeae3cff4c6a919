"""Keystone v3 through keystoneauth1 (the only module importing it).

Two uses, both blocking (callers run them off the event loop with
`asyncio.to_thread`):

- `TokenValidator` (the hub): `GET /v3/auth/tokens` with `X-Subject-Token`,
  authenticated as the hub's own service user — what keystonemiddleware's
  auth_token does — and the answer parsed by keystoneauth1's `access` module.
- `AppCredentialToken` (an agent): a token for the agent's application
  credential, which keystoneauth1 caches and renews before it expires.

keystoneauth1's errors are translated here: Keystone not answering (or
refusing the hub's own credentials) is `IdentityUnavailable`, a 503 — never
the 401 that makes a client throw away a good token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keystoneauth1 import access, session
from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1.identity import v3

from edgesync.errors import IdentityUnavailable


@dataclass(frozen=True)
class TokenInfo:
    """What the hub needs of a validated token."""

    user_id: str
    project_id: str | None
    roles: tuple[str, ...]
    expires_at: float  # seconds since the epoch
    application_credential_id: str | None = None


@dataclass(frozen=True)
class ServiceCredentials:
    """The hub's own Keystone user (it needs the service role, or admin, to validate tokens)."""

    auth_url: str
    username: str
    password: str
    project_name: str = "service"
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    timeout_s: float = 5.0
    ca_file: Path | None = None  # verifies an https:// Keystone (None: the system's CAs)


def _verify(ca_file: Path | None) -> str | bool:
    """keystoneauth's `verify`: the CA bundle to check Keystone's certificate with."""
    return str(ca_file) if ca_file is not None else True


class TokenValidator:
    def __init__(self, creds: ServiceCredentials) -> None:
        self._auth_url = creds.auth_url.rstrip("/")
        plugin = v3.Password(auth_url=self._auth_url, username=creds.username, password=creds.password,
                             project_name=creds.project_name, user_domain_name=creds.user_domain_name,
                             project_domain_name=creds.project_domain_name)
        self._session = session.Session(auth=plugin, timeout=creds.timeout_s, verify=_verify(creds.ca_file))
        self._who = f"user {creds.username!r} at {self._auth_url}"

    def validate(self, token: str) -> TokenInfo | None:
        """The token's owner, project and roles; None if Keystone says it is not valid (or expired)."""
        try:
            resp = self._session.get(f"{self._auth_url}/auth/tokens?nocatalog",
                                     headers={"X-Subject-Token": token}, authenticated=True,
                                     raise_exc=False, connect_retries=0)
        except ks_exceptions.Unauthorized as exc:  # raised getting the hub's own token
            raise IdentityUnavailable(f"Keystone refused the hub's own service credentials ({self._who}); "
                                      f"the hub can't validate tokens: {exc}") from exc
        except ks_exceptions.ClientException as exc:  # connect failures, timeouts, discovery, 5xx
            raise IdentityUnavailable(f"Keystone at {self._auth_url} can't be reached to validate the token "
                                      f"({type(exc).__name__}: {exc}); try again later") from exc
        if resp.status_code in (401, 404):  # 404: not a valid token; 401: ours was revoked meanwhile
            if resp.status_code == 401:
                self._session.invalidate()
            return None
        if resp.status_code == 403:
            raise IdentityUnavailable(f"Keystone does not let {self._who} validate tokens (give it the "
                                      "service role)")
        if resp.status_code != 200:
            raise IdentityUnavailable(f"Keystone answered {resp.status_code} validating a token; try again later")
        return _token_info(access.create(body=resp.json(), auth_token=token))


def _token_info(ref: Any) -> TokenInfo:
    expires = ref.expires
    return TokenInfo(user_id=str(ref.user_id), project_id=ref.project_id, roles=tuple(ref.role_names or ()),
                     expires_at=expires.timestamp() if expires is not None else 0.0,
                     application_credential_id=getattr(ref, "application_credential_id", None))


def _session_token(ks_session: session.Session, auth_url: str, credentials: str) -> str:
    """The session's token (keystoneauth1 caches and renews it), Keystone's
    refusal or absence as IdentityUnavailable naming `credentials`."""
    try:
        token = ks_session.get_token()
    except ks_exceptions.Unauthorized as exc:
        raise IdentityUnavailable(f"Keystone at {auth_url} refused {credentials}: {exc}", retryable=False) from exc
    except ks_exceptions.ClientException as exc:
        raise IdentityUnavailable(f"Keystone at {auth_url} can't be reached for a token of {credentials} "
                                  f"({type(exc).__name__}: {exc})") from exc
    if not token:
        raise IdentityUnavailable(f"Keystone at {auth_url} gave no token for {credentials}")
    return str(token)


class AppCredentialToken:
    """An agent's Keystone token from its application credential."""

    def __init__(self, auth_url: str, credential_id: str, secret: str, timeout_s: float = 10.0,
                 ca_file: Path | None = None) -> None:
        plugin = v3.ApplicationCredential(auth_url=auth_url.rstrip("/"), application_credential_id=credential_id,
                                          application_credential_secret=secret)
        self._session = session.Session(auth=plugin, timeout=timeout_s, verify=_verify(ca_file))
        self._auth_url = auth_url

    def get(self) -> str:
        return _session_token(self._session, self._auth_url, "this agent's application credential")


@dataclass(frozen=True)
class UserCredentials:
    """A person's (or a script's) Keystone password credentials, as clouds.yaml or OS_* give them."""

    auth_url: str
    username: str
    password: str
    project_name: str | None = None
    project_id: str | None = None
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    region_name: str | None = None
    ca_file: str | None = None


class UserToken:
    """A project-scoped token for `UserCredentials`, which keystoneauth1 caches
    and renews; and the catalog's endpoint for a service type."""

    def __init__(self, creds: UserCredentials, timeout_s: float = 10.0) -> None:
        plugin = v3.Password(auth_url=creds.auth_url.rstrip("/"), username=creds.username, password=creds.password,
                             project_name=creds.project_name, project_id=creds.project_id,
                             user_domain_name=creds.user_domain_name, project_domain_name=creds.project_domain_name)
        self._session = session.Session(auth=plugin, timeout=timeout_s, verify=creds.ca_file or True)
        self._creds = creds

    def get(self) -> str:
        return _session_token(self._session, self._creds.auth_url, f"the credentials of {self._creds.username!r}")

    def endpoint(self, service_type: str, interface: str = "public") -> str | None:
        """The catalog's URL of `service_type` (e.g. "image") in the credentials' region."""
        try:
            url = self._session.get_endpoint(service_type=service_type, interface=interface,
                                             region_name=self._creds.region_name)
        except ks_exceptions.ClientException as exc:
            raise IdentityUnavailable(f"Keystone at {self._creds.auth_url}: no {service_type} endpoint "
                                      f"({type(exc).__name__}: {exc})") from exc
        return str(url) if url else None
