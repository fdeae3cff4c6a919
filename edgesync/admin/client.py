"""The hub's HTTP API for the admin CLI: where it is, who calls, and requests
whose failures come back as edgesync errors carrying the hub's own message."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from edgesync.errors import EdgesyncError
from edgesync.tls import TlsConfig, http_session, is_certificate_error

REQUEST_TIMEOUT_S = 60.0


class AdminError(EdgesyncError):
    """The admin CLI can't do what was asked (bad options, no such image)."""


class HubUnreachable(EdgesyncError):
    """No answer from the hub: wrong URL, hub down, network."""

    retryable = True


class ApiError(EdgesyncError):
    """The hub refused a request; `http_status` and the message are the hub's."""

    def __init__(self, http_status: int, title: str, message: str) -> None:
        super().__init__(f"{title} ({http_status}): {message}")
        self.http_status = http_status
        self.title = title


@dataclass(frozen=True)
class Connection:
    url: str  # the hub's base URL, without /v2
    token: str | None
    ca_file: Path | None = None  # verifies an https:// hub; None: the system's trust store


def resolve_connection(url: str | None, token: str | None, lab_dir: str | None,
                       env: Mapping[str, str] = os.environ, *, cacert: str | None = None) -> Connection:
    """Options first, then the lab's lab.json, then the environment."""
    lab = _read_lab(Path(lab_dir)) if lab_dir else {}
    ca_file = cacert or lab.get("ca_file") or env.get("EDGESYNC_CACERT") or env.get("OS_CACERT")
    url = url or lab.get("hub_url") or env.get("EDGESYNC_URL") or env.get("OS_IMAGE_URL")
    token = token or lab.get("admin_token") or env.get("EDGESYNC_TOKEN") or env.get("OS_AUTH_TOKEN")
    if not url:
        raise AdminError("No hub URL: give --url URL or --lab-dir DIR, or set EDGESYNC_URL (or OS_IMAGE_URL)")
    return Connection(base_url(url), token or None, Path(ca_file) if ca_file else None)


def base_url(url: str) -> str:
    """The hub's root: glanceclient's OS_IMAGE_URL may end in /v2, ours don't."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AdminError(f"The hub URL must look like http://host:port, got {url!r}")
    root = url.rstrip("/")
    return root[: -len("/v2")] if root.endswith("/v2") else root


def _read_lab(directory: Path) -> dict[str, Any]:
    path = directory / "lab.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise AdminError(f"No lab in {directory}: {path} does not exist (edgesync lab up --dir {directory})") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise AdminError(f"Can't read {path}: {exc}") from exc
    if not isinstance(info, dict):
        raise AdminError(f"{path} is not a lab description (a JSON object)")
    return info


class HubClient:
    """`async with HubClient(conn) as hub: await hub.get("/v2/images/…")`."""

    def __init__(self, conn: Connection, *, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.url = conn.url
        self._token = conn.token
        self._ca_file = conn.ca_file
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HubClient:
        headers = {"X-Auth-Token": self._token} if self._token else {}
        self._session = http_session(TlsConfig(ca_file=self._ca_file), headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()

    async def get(self, path: str, **params: str) -> Any:
        return await self._request("GET", path, params=params)

    async def post(self, path: str, body: Any) -> Any:
        return await self._request("POST", path, body=body)

    async def put(self, path: str, body: Any) -> Any:
        return await self._request("PUT", path, body=body)

    async def delete(self, path: str) -> Any:
        return await self._request("DELETE", path)

    async def _request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                       body: Any = None) -> Any:
        assert self._session is not None, "use HubClient as `async with`"
        try:
            async with self._session.request(method, self.url + path, params=params, json=body) as resp:
                raw = await resp.read()
                status = resp.status
        except aiohttp.ClientError as exc:
            if is_certificate_error(exc):
                raise AdminError(f"The hub at {self.url} showed a certificate that does not verify: {exc} "
                                 "(give the CA bundle that signed it: --os-cacert FILE or $OS_CACERT)") from exc
            raise HubUnreachable(f"Can't reach the hub at {self.url}: {str(exc) or type(exc).__name__} "
                                 "(check --url / EDGESYNC_URL and that the hub runs)") from exc
        except TimeoutError as exc:
            raise HubUnreachable(f"The hub at {self.url} did not answer {method} {path} "
                                 f"within {self._timeout_s:.0f} s") from exc
        if status >= 400:
            raise _api_error(status, raw)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EdgesyncError(f"{method} {path}: the hub answered {status} with a body that is not JSON") from exc


def _api_error(status: int, raw: bytes) -> ApiError:
    """The hub's `{"error": {"code", "title", "message"}}`, or what else came back."""
    try:
        error = json.loads(raw)["error"]
        return ApiError(status, str(error["title"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        text = raw.decode(errors="replace").strip()[:300]
        return ApiError(status, "Error", text or "(no message)")
