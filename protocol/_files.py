"""Writing a file so that a reader never meets half of it.

The data goes to a temporary file beside the target, with its mode set and its bytes fsynced,
and is then put in place in one step: ``os.replace`` when an existing file may be replaced,
``os.link`` (which fails if the target exists) when it may not. Used for keys and
certificates (provisioning) and for the self-test's reports (gateway).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, data: bytes, mode: int, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` with ``mode``; without ``overwrite``, an existing ``path``
    raises ``FileExistsError`` and is left as it was."""
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)     # the umask may have taken bits away
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
