"""``kemon``: one command for the gateway, the collector, provisioning and the simulators.

Subcommand groups are imported only when used, so ``kemon gateway …`` on a small device never
loads the collector. Every command exits 0 on success, 1 on a runtime failure and 2 on bad usage,
configuration or input, with one line on stderr and no traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

__all__ = ["main"]

# name -> (module, attribute, one-line help)
_GROUPS = {
    "gateway": ("gateway._cli", "gateway_group", "Run and inspect an edge gateway."),
    "collector": ("collector._cli", "collector_group",
                  "Run and inspect a collector (province or national)."),
    "sim": ("gateway.sim._cli", "sim_command", "Simulated meters for training, demos and tests."),
    "demo": ("gateway.sim._demo", "demo_command", "Run the whole chain on simulated meters."),
    "provision": ("provisioning._cli", "provision_group",
                  "Certificates: a CA, broker servers, gateways, collectors; revocation."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _GROUPS:
            return None
        module, attr, _ = _GROUPS[cmd_name]
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, _, help_) in sorted(_GROUPS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kemon", prog_name="kemon")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Kemon: online energy-consumption monitoring (重点用能单位能耗在线监测).

    \b
    Examples:
      kemon gateway check -c /etc/kemon/gateway.toml
      kemon gateway run -c /etc/kemon/gateway.toml
      kemon gateway readings -c gateway.toml --period 15min --since 2026-11-27
      kemon collector status -c /etc/kemon/collector.toml
      kemon sim -c gateway.toml
      kemon demo
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        # pymodbus logs every timeout at ERROR with a frame dump; our drivers report failures
        # themselves (per-meter counters, offline transitions), so keep its voice for -vv.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> Any:
    return cli.main(args=argv, prog_name="kemon")
