"""A server's TLS context and bearer tokens, read again from their files on SIGHUP.

cert-manager and SPIFFE replace certificates often; a restart for each would
cut every connection. asyncio's server keeps the SSLContext it started with,
and loading new files into that one could leave it half changed (a new
certificate with the old key) and can only add CAs. So a new context is made
from the files, and the listening context's SNI callback, which OpenSSL runs
at every ClientHello (with a server name or without), hands each new
handshake the newest. Connections already open keep theirs.
"""

from __future__ import annotations

import logging
import os
import ssl

from emotion.config import ServerConfig
from emotion.security import TOKENS_VARIABLE, BearerTokens, SecurityConfigError, load_tokens

log = logging.getLogger(__name__)


class Credentials:
    """What a server's clients prove themselves against, and prove it with: TLS and tokens."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        #: The tokens Pipeline calls must present (None: no authentication); changed in place.
        self.tokens = BearerTokens(config.tokens) if config.tokens else None
        self._listening: ssl.SSLContext | None = None
        self._newest: ssl.SSLContext | None = None

    def tls(self) -> ssl.SSLContext | None:
        """The context to listen with, made at the first call; None without TLS.

        Raises SecurityConfigError for unreadable or mismatched files.
        """
        if self.config.tls is None:
            return None
        if self._listening is None:
            context = self.config.tls.context()
            context.sni_callback = self._choose
            self._listening = self._newest = context
        return self._listening

    def _choose(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        if self._newest is not None and self._newest is not self._listening:
            connection.context = self._newest

    def reload(self) -> None:
        """Read the TLS files and the token file again; a failure keeps what was in use.

        Each failure is one line in the log, saying which file and why. The
        certificate, its key and the client CA are taken together: a new
        certificate must not go out with the old key.
        """
        tls = self.config.tls
        if tls is not None and self._listening is not None:
            try:
                self._newest = tls.context()
            except SecurityConfigError as exc:
                log.error("keeping the TLS certificate in use: %s", exc)
            else:
                log.info("TLS certificate read again from %s", tls.cert)
        if self.tokens is not None and self.config.tokens_file is not None:
            try:
                tokens = load_tokens(self.config.tokens_file, os.environ.get(TOKENS_VARIABLE))
            except SecurityConfigError as exc:
                log.error("keeping the tokens in use: %s", exc)
            else:
                self.tokens.accept(tokens)
                log.info("%d tokens read again from %s", len(tokens), self.config.tokens_file)
