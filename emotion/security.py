"""TLS contexts for server and client, and the bearer tokens the server accepts.

The settings they are made from live in :mod:`emotion.config`.
"""

from __future__ import annotations

import hmac
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

#: The server's tokens beside those of its token file, comma-separated.
TOKENS_VARIABLE = "EMOTION_AUTH_TOKENS"


class SecurityConfigError(Exception):
    """A certificate, key or token file is missing or unusable; the message says which."""


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The server's TLS context; with ``client_ca``, client certificates are required (mTLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key)
    if client_ca is not None:
        _load_ca(context, client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    # gRPC runs over HTTP/2, which TLS clients ask for by ALPN.
    context.set_alpn_protocols(["h2"])
    return context


def client_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client's TLS context: checks the server against ``ca`` (else the system's roots)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        _load_ca(context, ca)
    if cert is not None and key is not None:
        _load_chain(context, cert, key)
    context.set_alpn_protocols(["h2"])
    return context


class Unauthenticated(Exception):
    """A call without an accepted bearer token; the message says what to send."""


class BearerTokens:
    """The tokens a server accepts in ``authorization: Bearer <token>``."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self.accept(tokens)

    def accept(self, tokens: Sequence[str]) -> None:
        """Accept ``tokens`` from now on, and no others (the token file was read again)."""
        if not tokens:
            raise ValueError("BearerTokens needs at least one token")
        self._tokens = [token.encode() for token in tokens]

    def check(self, authorization: str | None) -> None:
        """Raise Unauthenticated unless ``authorization`` carries an accepted token."""
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():  # schemes ignore case
            raise Unauthenticated("missing credentials: send 'authorization: Bearer <token>'")
        offered = credentials.strip().encode()
        # Compare with every token, always: the time taken says nothing about a match.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(offered, token)
        if not matched:
            raise Unauthenticated("the bearer token is not valid")


def load_tokens(path: Path | None = None, environment: str | None = None) -> list[str]:
    """Accepted bearer tokens: one per line of ``path``, and comma-separated in ``environment``.

    Blank lines and lines starting with # are skipped. A file that exists but
    holds no token is an error: it would silently turn authentication off.
    """
    tokens: list[str] = []
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise SecurityConfigError(
                f"cannot read token file {path}: {exc.strerror or exc}"
            ) from None
        tokens += [
            line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
        ]
        if not tokens:
            raise SecurityConfigError(f"token file {path} holds no token")
    if environment:
        tokens += [token.strip() for token in environment.split(",") if token.strip()]
    for token in tokens:
        if not token.isprintable() or " " in token:
            raise SecurityConfigError("tokens must be printable and without spaces")
    return tokens


def read_token(path: Path | None, environment: str | None = None) -> str | None:
    """The client's token: from ``path`` if given, else ``environment``."""
    if path is not None:
        try:
            return path.read_text().strip() or None
        except OSError as exc:
            raise SecurityConfigError(
                f"cannot read token file {path}: {exc.strerror or exc}"
            ) from None
    return environment or None


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        context.load_cert_chain(os.fspath(cert), os.fspath(key))
    except FileNotFoundError as exc:
        # ssl names no file: the certificate and the key are both candidates.
        missing = exc.filename or next((p for p in (cert, key) if not p.exists()), cert)
        raise SecurityConfigError(f"cannot read {missing}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise SecurityConfigError(
            f"certificate {cert} and key {key} are not a usable pair: {exc}"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=os.fspath(ca))
    except FileNotFoundError:
        raise SecurityConfigError(f"cannot read CA file {ca}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise SecurityConfigError(f"CA file {ca} is not usable: {exc}") from None
