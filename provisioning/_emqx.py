"""An EMQX 5 listener configuration and topic ACL for a Kemon platform broker: pure text, the
EMQX counterpart of ``_mosquitto``.

Written for **EMQX 5.8** (the last open-source 5.x line); EMQX 5.1 and later 5.x read it the same
way. Not for 5.0 before 5.0.16, whose ``${username}`` stood for one whole topic level only, so
that a gateway's ``<unit>/<gateway>`` never matched (EMQX pull request 9871, "allow the placeholder
to be anywhere in the topic"). EMQX 6.3 and later refuse a ``/`` inside a substituted user name
by default (``authorization.topic_template_allow.slash``, EMQX pull request 17596): the file
carries that line commented out, to be enabled there.

What it sets up, as the Mosquitto configuration does:

- the TLS listener ``listeners.ssl.default`` on ``bind:port`` with ``verify = verify_peer`` and
  ``fail_if_no_peer_cert = true``: only clients with a certificate from the Kemon CA connect;
  TLS 1.3 and 1.2 only;
- ``mqtt.peer_cert_as_username = cn``: the certificate's CN is the user name, whatever the
  client sends (``<unit>/<gateway>`` for a gateway, ``collector-<name>`` for a collector);
- the plain TCP, WebSocket and secure WebSocket listeners that EMQX enables by default are
  switched off: a listener without client certificates would let anyone claim a user name;
- authorization from ``acl.conf`` only, ``no_match = deny``, and ``deny_action = disconnect`` (a
  client that publishes outside its ACL is disconnected; Mosquitto instead answers its PUBACK
  with 0x87 "Not authorized");
- the offline queue and in-flight window sized like Mosquitto's ``max_queued_messages`` and
  ``max_inflight_messages`` (``mqtt.max_mqueue_len``, ``mqtt.max_inflight``).

The ACL (``emqx_acl``) is EMQX's Erlang-term ``acl.conf``, matched top to bottom, first match
wins, ending in ``{deny, all}.``. It allows exactly what ``mosquitto_acl`` allows. EMQX checks a
subscription when it is made (Mosquitto checks each delivery instead); a shared subscription
``$share/<group>/<filter>`` is checked as ``<filter>`` (EMQX ``emqx_channel``: "only check
t/# for $share/g/t/#"), so the collectors' ``$share/...`` filters need no rules of their own.

How to load them (files in OUT: ``emqx-kemon.hocon``, ``acl.conf``, ``ca.pem``, ``server.pem``,
``server.key``; readable by the ``emqx`` user)::

    # at the end of /etc/emqx/emqx.conf (HOCON: the later setting wins)
    include "/etc/emqx/kemon/emqx-kemon.hocon"

then restart EMQX. Settings in ``emqx.conf`` and what it includes take precedence over changes
made later in the Dashboard (stored in ``data/configs/cluster.hocon``, EMQX 5.1 and later).
Environment variables override both: each key with the prefix ``EMQX_``, dots as double
underscores, e.g. ``EMQX_AUTHORIZATION__NO_MATCH=deny`` or
``EMQX_LISTENERS__SSL__DEFAULT__BIND=0.0.0.0:8883`` (containers).

Revocation: EMQX checks CRLs only through a CRL distribution point in the client certificate
(``ssl_options.enable_crl_check``), which Kemon certificates do not carry; keep a revoked
gateway out by banning its CN as a user name (Dashboard, Access Control, Banned Clients, or
``POST /api/v5/banned`` with ``"as": "username"``) as well as running ``kemon provision revoke``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from pathlib import Path

from ._acl import GATEWAY_OWN, grants

__all__ = ["EMQX_VERSION", "emqx_acl", "emqx_listener_conf"]

EMQX_VERSION = "5.8"


def _s(text: str) -> str:
    """A quoted string, for HOCON (JSON string syntax) and for Erlang terms alike: both use
    backslash escapes for ``"`` and ``\\``; our names and paths need nothing else."""
    return json.dumps(text, ensure_ascii=False)


def emqx_acl(collectors: Iterable[str] = (), relays: Iterable[str] = ()) -> str:
    """``acl.conf``: a gateway publishes only under ``kemon/v1/<its CN>/up/#`` and subscribes
    only to its own ``down/#``; each of ``collectors`` subscribes to every ``up/#`` and publishes
    to every ``down/#``; each of ``relays`` publishes ``up/#`` and subscribes to ``down/#``.
    Anything else is denied. Names are checked as collector names (``IdentityError``)."""
    lines = [f"%% Written by 'kemon provision broker --kind emqx' for EMQX {EMQX_VERSION}.",
             "%% The user name is the client certificate's CN (mqtt.peer_cert_as_username = cn).",
             "%% Matched top to bottom, the first match wins.",
             "",
             "%% Gateways (CN <unit>/<gateway>): only their own prefix.",
             *(f"{{allow, all, {action}, [{_s('kemon/v1/${username}/' + topic)}]}}."
               for action, topic in GATEWAY_OWN)]
    for grant in grants(collectors, relays):
        who = f"{{user, {_s(grant.common_name)}}}"
        lines += ["", f"%% {grant.common_name}: {' and '.join(grant.roles)}.",
                  *(f"{{allow, {who}, {action}, [{_s(topic)}]}}." for action, topic in grant.rules)]
    lines += ["", "%% Nothing else.", "{deny, all}."]
    return "\n".join(lines) + "\n"


def _bind(bind: str | None, port: int) -> str:
    """The listener's ``bind`` value as HOCON: the bare port (every interface) or a quoted
    ``"address:port"``, IPv6 in brackets; EMQX takes an IP address only, no host name
    (``emqx_schema:to_ip_port``, ``inet:parse_address``)."""
    if bind is None:
        return str(port)
    try:
        address = ipaddress.ip_address(bind)
    except ValueError:
        raise ValueError(f"EMQX binds to an IP address, not {bind!r}") from None
    return _s(f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}")


def emqx_listener_conf(out_dir: Path, port: int, bind: str | None = None, *,
                       max_queued: int = 320_000, max_inflight: int = 1000) -> str:
    """``emqx-kemon.hocon`` for files in ``out_dir`` (ca.pem, server.pem, server.key, acl.conf):
    the mutual-TLS listener on ``bind:port`` (``bind`` an IP address, else ``ValueError``;
    None: every interface, as ``mosquitto_conf`` does), the CN as user name, the other
    listeners off and authorization from ``acl.conf`` with ``no_match = deny``.
    ``max_queued`` and ``max_inflight`` as in ``mosquitto_conf`` (docs/national-sizing.md)."""
    out = out_dir.resolve()
    return "\n".join([
        f"# Written by 'kemon provision broker --kind emqx' for EMQX {EMQX_VERSION} "
        "(5.1 and later 5.x read it the same way).",
        "# Load it from the end of /etc/emqx/emqx.conf and restart EMQX:",
        f"#   include {_s(str(out / 'emqx-kemon.hocon'))}",
        "",
        "# Only the mutual-TLS listener: the others would let a client claim any user name.",
        "listeners.tcp.default.enable = false",
        "listeners.ws.default.enable = false",
        "listeners.wss.default.enable = false",
        "",
        "listeners.ssl.default {",
        "  enable = true",
        f"  bind = {_bind(bind, port)}",
        "  ssl_options {",
        f"    cacertfile = {_s(str(out / 'ca.pem'))}",
        f"    certfile = {_s(str(out / 'server.pem'))}",
        f"    keyfile = {_s(str(out / 'server.key'))}",
        "    verify = verify_peer",
        "    fail_if_no_peer_cert = true",
        '    versions = ["tlsv1.3", "tlsv1.2"]',
        "  }",
        "}",
        "",
        "mqtt {",
        "  # The client certificate's CN is the user name: <unit>/<gateway> or collector-<name>.",
        "  peer_cert_as_username = cn",
        f"  max_mqueue_len = {max_queued}",
        f"  max_inflight = {max_inflight}",
        "}",
        "",
        "authorization {",
        "  no_match = deny",
        "  deny_action = disconnect",
        "  sources = [",
        f"    {{type = file, enable = true, path = {_s(str(out / 'acl.conf'))}}}",
        "  ]",
        "}",
        "# EMQX 6.3 and later: a gateway's user name <unit>/<gateway> contains '/', which those",
        "# versions refuse to substitute into ${username} unless allowed (the CA issues no CN",
        "# with '+' or '#'):",
        "# authorization.topic_template_allow.slash = true",
        "",
    ])
