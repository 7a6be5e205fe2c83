"""What platforms send a gateway on ``kemon/v1/{unit}/{gateway}/down/{kind}``.

==========  ======================================================================
kind        payload (JSON object)
==========  ======================================================================
notice      a platform notice (推送信息) for the enterprise: ``{"title": …, "text": …}``
            and any other fields; kept in the store's ``notice`` table for the local page
resend      补传: ``{"from_seq": A, "to_seq": B}`` — the stored batches A..B are published
            again to the asking platform only (same bytes, same seqs); or
            ``{"since": T, "until": T}`` (RFC 3339) — the readings of that time range are
            rebuilt from history and sealed as new batches of kind ``resend``
time        ``{"ts": T}``: the platform's time; the offset to the local clock is recorded
            (``kv`` ``time_hint``) and logged when above 1 s. The clock itself is left to NTP.
==========  ======================================================================

Anything malformed (not JSON, not an object, wrong types, absurd ranges, unknown kind) is
logged in one line and dropped; nothing a platform sends can stop the gateway.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from protocol import BatchError, parse_time, to_rfc3339

from ._outbox import Outbox
from ._store import Store, StoreError

__all__ = ["MAX_NOTICE_BYTES", "MAX_RESEND_READINGS", "Downlink"]

log = logging.getLogger(__name__)

MAX_NOTICE_BYTES = 64 * 1024
MAX_RESEND_READINGS = 2_000_000
_MAX_SEQ_SPAN = 100_000
_MAX_SPAN_MS = 400 * 86_400_000

Republish = Callable[[Sequence[tuple[int, bytes]]], Awaitable[None]]


class DownlinkError(ValueError):
    """A downlink message that cannot be used (logged and dropped)."""


class Downlink:
    """Handles downlink messages for every destination of one gateway."""

    def __init__(self, store: Store, outbox: Outbox, republish: Mapping[str, Republish], *,
                 on_sealed: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.outbox = outbox
        self.republish = republish
        self.on_sealed = on_sealed
        self.clock = clock

    async def handle(self, destination: str, kind: str, payload: bytes) -> None:
        try:
            body = _object(payload)
            if kind == "notice":
                self._notice(destination, body)
            elif kind == "resend":
                await self._resend(destination, body)
            elif kind == "time":
                self._time(destination, body)
            else:
                raise DownlinkError(f"unknown kind {kind!r}")
        except (DownlinkError, BatchError) as exc:
            log.warning("%s: down/%s dropped: %s", destination, kind, exc)
        except StoreError as exc:
            log.error("%s: down/%s not handled: %s", destination, kind, exc)

    def _notice(self, destination: str, body: dict[str, Any]) -> None:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        now = int(self.clock() * 1000)
        self.store.write("storing a notice", lambda c: c.execute(
            "INSERT INTO notice (received, destination, body) VALUES (?, ?, ?)",
            (now, destination, text)))
        log.info("%s: notice received: %s", destination, str(body.get("title", ""))[:80])

    async def _resend(self, destination: str, body: dict[str, Any]) -> None:
        if "from_seq" in body or "to_seq" in body:
            first, last = _int(body, "from_seq"), _int(body, "to_seq")
            if not 1 <= first <= last or last - first > _MAX_SEQ_SPAN:
                raise DownlinkError(f"seq range {first}-{last} is not 1 <= from <= to within "
                                    f"{_MAX_SEQ_SPAN}")
            last = min(last, self.outbox.last_seq())
            held = self.outbox.batches_between(first, last)
            if held:
                await self.republish[destination](held)
            missing = sorted(set(range(first, last + 1)) - {s for s, _ in held})
            log.info("%s: resend %d-%d: %d batches sent again%s", destination, first, last,
                     len(held), f", {len(missing)} no longer held" if missing else "")
            if missing:
                self.outbox.seal_special("gap", [], {
                    "reason": "requested batches are no longer held", "destination": destination,
                    "lost_seq": [missing[0], missing[-1]],
                    "request": {"from_seq": first, "to_seq": last}})
                self.on_sealed()
            return
        since, until = _time(body, "since"), _time(body, "until")
        if not since < until or until - since > _MAX_SPAN_MS:
            raise DownlinkError("time range must have since < until, at most 400 days apart")
        readings = list(self.store.query(since_ms=since, until_ms=until,
                                         limit=MAX_RESEND_READINGS + 1))
        if len(readings) > MAX_RESEND_READINGS:
            raise DownlinkError(f"more than {MAX_RESEND_READINGS} readings in the range: "
                                "ask for a shorter one")
        info = {"request": {"since": to_rfc3339(since), "until": to_rfc3339(until)},
                "destination": destination}
        first, last = self.outbox.seal_special("resend", readings, info)
        self.on_sealed()
        log.info("%s: resend %s..%s: %d readings sealed as batches %d-%d", destination,
                 to_rfc3339(since), to_rfc3339(until), len(readings), first, last)

    def _time(self, destination: str, body: dict[str, Any]) -> None:
        platform = _time(body, "ts")
        offset = int(self.clock() * 1000) - platform
        self.store.put_state("time_hint", {"destination": destination, "offset_ms": offset,
                                           "received": int(self.clock() * 1000)})
        if abs(offset) > 1000:
            log.warning("%s says the time is %s: this clock is %+.1f s off", destination,
                        to_rfc3339(platform), offset / 1000)


def _object(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_NOTICE_BYTES:
        raise DownlinkError(f"{len(payload)} bytes is more than {MAX_NOTICE_BYTES}")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DownlinkError(f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(body, dict):
        raise DownlinkError("not a JSON object")
    return body


def _int(body: Mapping[str, Any], key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DownlinkError(f"{key} must be an integer")
    return value


def _time(body: Mapping[str, Any], key: str) -> int:
    value = body.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value                               # milliseconds since the epoch
    if not isinstance(value, str):
        raise DownlinkError(f"{key} must be an RFC 3339 time")
    try:
        return parse_time(value)
    except ValueError as exc:
        raise DownlinkError(f"{key}: {exc}") from None
