"""Where a collector's MQTT connections go and under which client id: the ``[broker]`` and
``[[upstream]]`` URLs, and the stable client ids that find persistent sessions again."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID

from ._model import CollectorConfig

__all__ = ["broker_address", "client_id_for"]


def client_id_for(cfg: CollectorConfig) -> str:
    """``broker.client_id``, or one derived from the certificate's CN and the host name —
    stable across restarts, so the persistent session is found again. Several collector
    processes with one certificate on one host need explicit, distinct ``client_id``s."""
    if cfg.broker.client_id:
        return cfg.broker.client_id
    cn = "collector"
    if cfg.broker.cert_file is not None:
        cert = x509.load_pem_x509_certificate(Path(cfg.broker.cert_file).read_bytes())
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if names:
            cn = str(names[0].value)
    raw = f"kemon-{cn}@{socket.gethostname()}"
    return re.sub(r"[^A-Za-z0-9_.:@-]", "_", raw)[:64]


def broker_address(url: str, insecure: bool) -> tuple[str, int, bool]:
    """(host, port, tls) of ``mqtts://host[:8883]`` or, with ``insecure``, ``mqtt://host[:1883]``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtts", "mqtt") or not parts.hostname:
        raise ValueError(f"broker url {url!r}: expected mqtts://host[:port]")
    if parts.scheme == "mqtt" and not insecure:
        raise ValueError(f"broker url {url!r}: mqtt:// (no TLS) needs insecure = true")
    tls = parts.scheme == "mqtts"
    # IANA service names: 8883 secure-mqtt, 1883 mqtt.
    return parts.hostname, parts.port or (8883 if tls else 1883), tls
