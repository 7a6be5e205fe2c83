"""TLS for an MQTT client connection (a gateway destination, a collector), and one-line
descriptions of TLS failures.

The context always verifies the broker: its certificate must chain to ``ca_file`` (the system's
trust store when none is given) and name the host in the URL (hostname checking on). The client
presents its own certificate and key when given. TLS 1.2 is the oldest version offered.
There is no switch to turn verification off: ``insecure = true`` in the configuration means
plain ``mqtt://`` (no TLS at all), never an unverified TLS connection.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

__all__ = ["ClientTlsContext", "client_tls_context", "describe_tls_error"]


class ClientTlsContext(ssl.SSLContext):
    """An ``SSLContext`` that remembers the sockets it wrapped.

    paho-mqtt does not close its socket when the TLS handshake inside ``connect`` fails; the
    caller closes it through ``close_sockets`` instead of leaving it to the garbage collector.
    """

    _wrapped: list[ssl.SSLSocket]

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        wrapped = super().wrap_socket(*args, **kwargs)
        if not hasattr(self, "_wrapped"):
            self._wrapped = []
        self._wrapped.append(wrapped)
        return wrapped

    def close_sockets(self) -> None:
        """Close every socket wrapped so far (a no-op for those already closed)."""
        for sock in getattr(self, "_wrapped", ()):
            sock.close()
        self._wrapped = []


def client_tls_context(ca_file: Path | None, cert_file: Path | None,
                       key_file: Path | None) -> ClientTlsContext:
    """A client context verifying the server against ``ca_file`` and presenting our certificate.

    Raises ``OSError``/``ssl.SSLError`` when a file is missing or unreadable (the caller reports
    it as a connection failure naming the destination).
    """
    context = ClientTlsContext(ssl.PROTOCOL_TLS_CLIENT)   # CERT_REQUIRED + check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file is not None else None)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    return context


def describe_tls_error(exc: BaseException) -> str:
    """One line saying why a TLS handshake failed, e.g. ``TLS handshake failed: certificate
    verify failed: Hostname mismatch, certificate is not valid for 'localhost'.``"""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = (exc.verify_message or exc.reason or str(exc)).rstrip(".")
        return f"TLS handshake failed: certificate verify failed: {detail}"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).replace("_", " ").lower()
        if "alert" in reason:
            # The broker sent an alert: it refused our certificate (unknown CA, expired, revoked).
            return f"TLS handshake failed: the broker refused our certificate ({reason})"
        return f"TLS handshake failed: {reason}"
    return f"TLS handshake failed: {exc}"
