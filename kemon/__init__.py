"""The ``kemon`` command: a thin layer over each package's own CLI module."""

__all__: list[str] = []
