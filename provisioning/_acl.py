"""The topic policy of a Kemon broker, stated once; ``_mosquitto`` and ``_emqx`` write it in
their brokers' syntax.

A gateway (user name = its certificate's CN ``<unit>/<gateway>``) publishes only under its own
``kemon/v1/<unit>/<gateway>/up/#`` and subscribes only to its own ``down/#``. A collector reads
every gateway's ``up/#`` and writes every ``down/#``; a relay (a lower-level collector relaying
into this broker) does the opposite. Nothing else is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ._pki import collector_common_name

__all__ = ["DOWN", "GATEWAY_OWN", "UP", "Grant", "grants"]

Action = Literal["publish", "subscribe"]

UP, DOWN = "kemon/v1/+/+/up/#", "kemon/v1/+/+/down/#"
#: a gateway's own topics, below ``kemon/v1/<its user name>/``
GATEWAY_OWN: tuple[tuple[Action, str], ...] = (("publish", "up/#"), ("subscribe", "down/#"))


@dataclass(frozen=True)
class Grant:
    """What one collector's certificate (CN ``collector-<name>``) may do, in order."""

    common_name: str
    roles: tuple[str, ...]                         # "collector", "relay"
    rules: tuple[tuple[Action, str], ...]


def grants(collectors: Iterable[str] = (), relays: Iterable[str] = ()) -> list[Grant]:
    """One grant per name (in the order first given), with the rules of each of its roles.
    Names are checked as collector names (``IdentityError``)."""
    collectors, relays = tuple(collectors), tuple(relays)
    out: list[Grant] = []
    for name in dict.fromkeys((*collectors, *relays)):
        roles: list[str] = []
        rules: list[tuple[Action, str]] = []
        if name in collectors:
            roles.append("collector")
            rules += [("subscribe", UP), ("publish", DOWN)]
        if name in relays:
            roles.append("relay")
            rules += [("publish", UP), ("subscribe", DOWN)]
        out.append(Grant(collector_common_name(name), tuple(roles), tuple(rules)))
    return out
