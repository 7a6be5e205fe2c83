"""What every ``kemon`` command shares: one-line errors with the contract's exit codes, running
an asyncio main, and time options (CONTRACT.md "Exit codes").

Exit 0 success · 1 runtime failure · 2 bad usage, configuration or input — one line on stderr,
never a traceback for a user's error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import click
from click.decorators import FC

from ._time import parse_time

__all__ = ["BadInput", "Failure", "one_line", "run_async", "time_option"]


class BadInput(click.ClickException):
    """Bad configuration or input: exit 2 with one line."""

    exit_code = 2

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class Failure(click.ClickException):
    """A runtime failure: exit 1 with one line."""

    exit_code = 1

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_async(main: Coroutine[Any, Any, None], *expected: type[Exception]) -> None:
    """Run ``main``; an ``expected`` failure or an ``OSError`` (also from inside a task group)
    becomes one line and exit 1. Anything else is a bug and keeps its traceback."""
    kinds: tuple[type[Exception], ...] = (OSError, *expected)
    try:
        asyncio.run(main)
    except kinds as exc:
        raise Failure(one_line(exc)) from None
    except ExceptionGroup as group:
        matched: ExceptionGroup[Exception] | None = group.split(kinds)[0]
        if matched is None:
            raise
        first: BaseException = matched
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise Failure(one_line(first)) from None


def time_option(name: str, help_: str) -> Callable[[FC], FC]:
    """A ``--since``-like option: RFC 3339 (no offset: China Standard Time) to epoch ms."""
    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
        if value is None:
            return None
        try:
            return parse_time(value)
        except ValueError as exc:
            raise BadInput(f"{name}: {exc}") from None
    return click.option(name, metavar="T", callback=convert, help=help_)
