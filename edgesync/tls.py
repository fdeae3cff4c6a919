"""TLS between sites: the one module that builds `ssl` contexts.

The policy, for every connection edgesync makes or accepts (HTTP and MQTT):

* TLS 1.2 and 1.3 only (SSLv3, TLS 1.0 and 1.1 refused);
* under TLS 1.2 only ECDHE key exchange with AEAD ciphers (AES-GCM,
  ChaCha20-Poly1305): forward secrecy, no CBC, no RSA key transport, no SHA-1
  MACs. TLS 1.3's suites are all of that kind; OpenSSL's defaults are kept;
* clients verify the peer's chain against the configured CA bundle and check
  its host name; without a CA bundle, the system's trust store.

A daemon without a certificate serves plaintext only if its config says so
(`plaintext = true`), and `warn_plaintext` says so in its log at start.
OpenSSL's errors become `ConfigError` here, naming the file to fix.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from edgesync.errors import ConfigError

# OpenSSL cipher string for TLS 1.2 (1.3 suites are configured apart, and all AEAD).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True)
class TlsConfig:
    """A daemon's `[hub.tls]` / `[agent.tls]` table.

    `cert_file`/`key_file`: the certificate (chain) this daemon serves HTTPS
    with; `ca_file`: the bundle its clients verify peers against.
    `plaintext`: serve plain HTTP, deliberately."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    plaintext: bool = False

    @property
    def serves_tls(self) -> bool:
        return self.cert_file is not None

    @property
    def scheme(self) -> str:
        return "https" if self.serves_tls else "http"


PLAINTEXT = TlsConfig(plaintext=True)


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = MINIMUM_VERSION
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def server_context(cert_file: Path, key_file: Path, *, client_ca_file: Path | None = None) -> ssl.SSLContext:
    """A server's context; with `client_ca_file`, clients must show a certificate it signed."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_chain(ctx, cert_file, key_file)
    if client_ca_file is not None:
        _load_ca(ctx, client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca_file: Path | None, *, cert_file: Path | None = None,
                   key_file: Path | None = None) -> ssl.SSLContext:
    """A client's context: verifies the server against `ca_file` (the system's
    store if None) and its host name; shows `cert_file` as its own identity."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # CERT_REQUIRED and check_hostname by default
    if ca_file is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca(ctx, ca_file)
    if cert_file is not None:
        if key_file is None:
            raise ConfigError(f"{cert_file}: a client certificate needs its key_file too")
        _load_chain(ctx, cert_file, key_file)
    return ctx


def http_session(tls: TlsConfig, **kwargs: object) -> aiohttp.ClientSession:
    """An aiohttp session whose https:// requests verify against `tls.ca_file`."""
    connector = aiohttp.TCPConnector(ssl=client_context(tls.ca_file))
    return aiohttp.ClientSession(connector=connector, **kwargs)  # type: ignore[arg-type]


def serving_context(tls: TlsConfig) -> ssl.SSLContext | None:
    """The context to serve with, or None for (explicitly configured) plaintext."""
    if tls.cert_file is None or tls.key_file is None:
        return None
    return server_context(tls.cert_file, tls.key_file)


def warn_plaintext(log: logging.Logger, what: str, tls: TlsConfig) -> None:
    if not tls.serves_tls:
        log.warning("%s serves PLAINTEXT HTTP (plaintext = true in its config): tokens and image data "
                    "cross the network unencrypted; give it a cert_file and key_file for HTTPS", what)


def is_certificate_error(exc: BaseException) -> bool:
    """A TLS failure no retry will fix: the peer's certificate didn't verify."""
    return isinstance(exc, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError)


def _load_chain(ctx: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"can't load the certificate {cert_file} with key {key_file}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from exc


def _load_ca(ctx: ssl.SSLContext, ca_file: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"can't load the CA bundle {ca_file}: {getattr(exc, 'strerror', None) or exc}") from exc
