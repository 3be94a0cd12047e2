"""The `dccnext` Typer root: built-in commands, plugin commands, and the one place errors become exit 2.

Built-in commands are the modules `dccnext_cli.cli.cmd_*`, each with a `register(app)` function.
Third-party packages add commands through the entry-point group `dccnext_cli.commands`: the entry
point may name a `typer.Typer` (added as a command group), a function (added as a command), or a
`register(app)`-style callable marked with `dccnext_register = True`. A plugin that fails to load
warns on stderr and the other commands keep working.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from ..common.text import printable
from ..common.threads import spin_briefly, start_measuring
from ..errors import DCCNeXtError
from .help import HelpCommand, render_help

ENTRY_POINT_GROUP = "dccnext_cli.commands"
err_console = Console(stderr=True)


# Click's UsageError as Typer vendors it (typer exports only its subclass BadParameter)
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

# Typer parses values with pydantic, whose words reach the message: said plainly instead.
LIBRARY_WORDING = ((re.compile(r"Value error, "), ""),
                   (re.compile(r"Input should be a valid (\w+), unable to parse string as an? \w+"), r"not a valid \1"),
                   (re.compile(r"Input should be a valid (\w+)"), r"not a valid \1"))


def _plain(message: str) -> str:
    for pattern, replacement in LIBRARY_WORDING:
        message = pattern.sub(replacement, message)
    return message

# Options whose value may be left out (Click's optional values do not survive Typer): bare -> this value.
OPTIONAL_VALUES = {"--resume": "auto"}


class DCCNeXtGroup(TyperGroup):
    """Turns the expected failures (DCCNeXtError) into one line on stderr and exit status 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args = list(args)
        for i, arg in enumerate(args):
            if arg in OPTIONAL_VALUES and (i + 1 == len(args) or args[i + 1].startswith("-")):
                args[i] = f"{arg}={OPTIONAL_VALUES[arg]}"
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: Any) -> None:
        render_help(self, ctx)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DCCNeXtError as e:
            # the message may quote a file (class names, paths): shown, never read as markup or terminal codes
            err_console.print(f"[bold red]error:[/] {escape(printable(str(e)))}", highlight=False, soft_wrap=True)
            # typer >= 0.29 vendors click: click.exceptions.Exit escapes it
            raise typer.Exit(getattr(e, "exit_code", 2)) from None
        except _USAGE_ERROR as e:  # a bad option or value: one line, not Click's usage panel
            where = e.ctx.command_path if getattr(e, "ctx", None) is not None else "dccnext"
            message = _plain(e.format_message())
            err_console.print(f"[bold red]error:[/] {escape(message)} (see {where} --help)", highlight=False,
                              soft_wrap=True, markup=True)
            raise typer.Exit(2) from None


def fail(message: str) -> None:
    """Stop a command with one clear line and exit status 2 (for checks made in the CLI layer)."""
    raise DCCNeXtError(message)


def _register_builtin(app: typer.Typer) -> None:
    folder = Path(__file__).parent
    for info in sorted(pkgutil.iter_modules([str(folder)]), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"{__package__}.{info.name}").register(app)


def _register_plugins(app: typer.Typer) -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if isinstance(obj, typer.Typer):
                app.add_typer(obj, name=ep.name)
            elif getattr(obj, "dccnext_register", False):
                obj(app)
            elif callable(obj):
                app.command(name=ep.name)(obj)
            else:
                raise TypeError(f"{ep.value} is neither a typer.Typer nor a function")
        except Exception as e:  # a broken plugin must not break the other commands
            err_console.print(
                f"[yellow]warning:[/] plugin command {ep.name!r} ({ep.value}) failed to load: {e}",
                highlight=False,
                soft_wrap=True,
            )


def build_app() -> typer.Typer:
    """A fresh app with every built-in and plugin command (tests build their own)."""
    app = typer.Typer(
        cls=DCCNeXtGroup,
        name="dccnext",
        help="DCCNeXt, the Dynamic Clustering Convolutional Neural Network (Li et al., AAAI 2025): "
        "train, evaluate, count, visualise and export it.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_show_locals=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    _register_builtin(app)
    _register_plugins(app)
    for info in app.registered_commands:  # every command, plugins' too, gets the same help layout
        if info.cls in (None, TyperCommand):
            info.cls = HelpCommand
    return app


def _version(value: bool) -> None:
    if value:
        from .._version import __version__

        typer.echo(f"dccnext {__version__}")
        raise typer.Exit()


def _root(
        version: Annotated[
            bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
        ] = False,
) -> None:
    """DCCNeXt, the Dynamic Clustering Convolutional Neural Network (Li et al., AAAI 2025)."""


def main() -> None:
    spin_briefly()  # before torch loads: libgomp reads it once (common/threads.py)
    start_measuring()
    app = build_app()
    app(prog_name="dccnext")


if __name__ == "__main__":
    sys.exit(main())
