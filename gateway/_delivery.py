"""Delivery: the outbox, one uplink per destination, and the downlink handler, wired together
for the runner. Built only when the configuration has destinations.

After every stored cycle the runner calls ``after_cycle()``: new readings are sealed into
batches and every uplink is woken. Each uplink runs as its own task, so a dead or slow
destination never delays another; each moves its own cursor on PUBACK only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ._downlink import Downlink
from ._errors import GatewayError
from ._model import GatewayConfig
from ._outbox import Outbox
from ._store import PruneResult, Store, StoreError
from ._uplink import Uplink

__all__ = ["Delivery", "IdentityError", "load_identity"]

log = logging.getLogger(__name__)


class IdentityError(GatewayError):
    """The gateway's key or certificate cannot be used."""


def load_identity(key_file: Path | None, cert_file: Path | None) -> tuple[PrivateKeyTypes, str]:
    """The gateway's private key and its certificate as PEM text."""
    if key_file is None or cert_file is None:
        raise IdentityError("no gateway identity: set [gateway] key_file and cert_file, or give "
                            "the first [[destination]] its key_file and cert_file")
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except OSError as exc:
        raise IdentityError(f"{key_file}: cannot read the key: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{key_file}: not an unencrypted PEM private key ({exc})") from None
    try:
        pem = cert_file.read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
    except OSError as exc:
        raise IdentityError(f"{cert_file}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise IdentityError(f"{cert_file}: not a PEM certificate ({exc})") from None
    if cert.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo) != \
            key.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo):
        raise IdentityError(f"{cert_file} does not hold the public key of {key_file}")
    return key, pem.decode("ascii")


def _version() -> str:
    try:
        return metadata.version("kemon")
    except metadata.PackageNotFoundError:
        return "unknown"


class Delivery:
    def __init__(self, cfg: GatewayConfig, store: Store) -> None:
        key, cert_pem = load_identity(cfg.gateway.key_file, cfg.gateway.cert_file)
        self.cfg = cfg
        self.store = store
        self.outbox = Outbox(store, unit=cfg.gateway.unit, gateway=cfg.gateway.id, key=key,
                             destinations=[d.name for d in cfg.destinations])
        birth = {"unit": cfg.gateway.unit, "gateway": cfg.gateway.id, "version": _version(),
                 "certificate": cert_pem, "started": int(time.time() * 1000)}
        self.uplinks: dict[str, Uplink] = {}
        self.downlink = Downlink(store, self.outbox,
                                 {d.name: self._republisher(d.name) for d in cfg.destinations},
                                 on_sealed=self.notify)
        for dest in cfg.destinations:
            self.uplinks[dest.name] = Uplink(
                dest, unit=cfg.gateway.unit, gateway=cfg.gateway.id, outbox=self.outbox,
                birth=birth, on_downlink=self._downlink_for(dest.name))

    def _republisher(self, name: str) -> Any:
        async def republish(batches: Any) -> None:
            await self.uplinks[name].republish(batches)
        return republish

    def _downlink_for(self, name: str) -> Any:
        async def on_downlink(kind: str, payload: bytes) -> None:
            await self.downlink.handle(name, kind, payload)
        return on_downlink

    def start(self, tg: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        self.seal()
        return [tg.create_task(u.run(), name=f"kemon.uplink[{name}]")
                for name, u in self.uplinks.items()]

    def seal(self) -> None:
        try:
            made = self.outbox.seal_pending()
        except StoreError as exc:
            log.error("sealing failed: %s", exc)
            return
        if made:
            self.notify()

    def notify(self) -> None:
        for uplink in self.uplinks.values():
            uplink.notify()

    def prune(self) -> PruneResult:
        result = self.outbox.prune()
        self.notify()                      # a gap batch may have been sealed
        return result

    def status(self) -> dict[str, Any]:
        now = int(time.time() * 1000)
        return {name: {"connected": u.connected, "acked_seq": self.outbox.acked_seq(name),
                       "last_error": u.last_error, "updated": now}
                for name, u in self.uplinks.items()}
