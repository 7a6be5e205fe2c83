"""A Mosquitto 2.0 configuration and topic ACL for a Kemon platform broker: pure text.

Keys as documented in mosquitto.conf(5) of 2.0.11. The broker takes every client's identity
from its certificate (``use_identity_as_username``: the CN ``<unit>/<gateway>`` or
``collector-<name>`` becomes the user name), so the ACL's ``%u`` is a gateway's own topic
prefix; anonymous clients are refused; TLS 1.2 is the minimum (``tls_version`` is a minimum
since 2.0); persistence is on so queued QoS 1 messages survive a restart.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ._acl import GATEWAY_OWN, grants

__all__ = ["mosquitto_acl", "mosquitto_conf"]


def mosquitto_acl(collectors: Iterable[str] = (), relays: Iterable[str] = ()) -> str:
    """A gateway writes only ``kemon/v1/<its unit>/<its gateway>/up/#`` and reads only its own
    ``down/#``; each of ``collectors`` reads every ``up/#`` and writes every ``down/#``; each of
    ``relays`` (lower-level collectors relaying into this broker) writes ``up/#`` and reads
    ``down/#``. Nothing else is allowed (``_acl``)."""
    verb = {"publish": "write", "subscribe": "read"}
    lines = ["# Written by 'kemon provision broker'. The user name is the client certificate's CN.",
             "# Gateways (CN <unit>/<gateway>): only their own prefix.",
             *(f"pattern {verb[action]} kemon/v1/%u/{topic}" for action, topic in GATEWAY_OWN)]
    for grant in grants(collectors, relays):
        lines += ["", f"user {grant.common_name}",
                  *(f"topic {verb[action]} {topic}" for action, topic in grant.rules)]
    return "\n".join(lines) + "\n"


def mosquitto_conf(out: Path, *, port: int, user: str, bind: str | None = None,
                   max_queued: int = 320_000, max_inflight: int = 1000) -> str:
    """``mosquitto.conf`` for files in ``out`` (ca.pem, ca.crl, server.pem, server.key, acl,
    data/). ``max_queued``: QoS 1 messages held per offline session (about 4 hours of a
    20,000-gateway national fleet, docs/national-sizing.md); ``max_inflight``: well above one
    collector ingest group of 200."""
    out = out.resolve()
    listener = f"listener {port}" + (f" {bind}" if bind else "")
    return "\n".join([
        "# Written by 'kemon provision broker'; start with:",
        f"#   mosquitto -c {out / 'mosquitto.conf'}",
        "per_listener_settings false",
        f"user {user}",
        "allow_anonymous false",
        f"acl_file {out / 'acl'}",
        "persistence true",
        f"persistence_location {out / 'data'}/",
        "autosave_interval 60",
        f"max_queued_messages {max_queued}",
        f"max_inflight_messages {max_inflight}",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
        "",
        listener,
        f"cafile {out / 'ca.pem'}",
        f"certfile {out / 'server.pem'}",
        f"keyfile {out / 'server.key'}",
        f"crlfile {out / 'ca.crl'}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
        "",
    ])
