"""Help that reads at 80 columns: every option name whole, one metavar style, paragraphs that reflow, examples last.

Typer's own rich help squeezes six columns into the terminal (option names cut off at 80 columns, a `<bool>`
on every flag, choice lists as wide as the help), so every command renders its help here instead:

    --name METAVAR        help, reflowed [default: ...]
    --a-very-long-option-name / --no-a-very-long-option-name
                          help on the next line when the name does not fit

Metavars are upper-case words (FILE, DIR, N, VARIANT); choices are listed once, in the help text. A
command's `epilog` holds its examples, one command line each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.highlighter import RegexHighlighter
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperOption

__all__ = ["HelpCommand", "render_help", "metavar", "reflow"]

MAX_WIDTH = 100  # wider help is harder to read, whatever the terminal
NAME_WIDTH = 26  # longer option names get the help on the next line
TYPE_METAVARS = {int: "N", float: "NUMBER", Path: "PATH", str: "TEXT"}


class _Highlighter(RegexHighlighter):
    highlights = [r"(?P<option>(?<![\w-])--?[A-Za-z][\w-]*)"]


STYLES = {"option": "bold cyan", "metavar": "yellow", "extra": "dim", "required": "red", "title": "bold"}
highlighter = _Highlighter()


def _console() -> Console:
    width = Console().width
    return Console(width=min(width, MAX_WIDTH), highlight=False)


def reflow(text: str) -> list[str]:
    """Paragraphs of a docstring with their line breaks removed (indented blocks keep theirs)."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        verbatim = block.startswith("\b") or all(line.startswith("    ") for line in lines)
        text = "\n".join(line.rstrip() for line in lines) if verbatim else " ".join(line.strip() for line in lines)
        paragraphs.append(text.strip("\b\n"))
    return paragraphs


def metavar(param: Any) -> str:
    """FILE, DIR, N, VARIANT, ...: the word that stands for an option's value ('' for a flag)."""
    if param.metavar:
        return param.metavar
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    desc = getattr(param, "type_descriptor", None)
    name = (param.name or "value").upper()
    if desc is None or desc.is_choice:
        return name
    if desc.is_path:
        return desc.path_type.upper()
    annotation = desc.annotation
    if desc.is_list:
        annotation = getattr(annotation, "__args__", (str,))[0]
    return TYPE_METAVARS.get(annotation, name)


def _argument_name(param: TyperArgument) -> str:
    name = param.metavar or (param.name or "arg").upper()
    return name + ("..." if param.nargs != 1 else "")


def _usage(command: Any, ctx: Any) -> Text:
    pieces = [ctx.command_path]
    if any(isinstance(p, TyperOption) for p in command.get_params(ctx)):
        pieces.append("[OPTIONS]")
    for param in command.get_params(ctx):
        if isinstance(param, TyperArgument):
            name = _argument_name(param)
            pieces.append(name if param.required else f"[{name}]")
    if hasattr(command, "list_commands"):
        pieces.append("COMMAND [ARGS]...")
    return Text.assemble(("Usage: ", STYLES["title"]), " ".join(pieces))


def _choices(param: Any) -> list[str]:
    desc = getattr(param, "type_descriptor", None)
    values = getattr(desc, "choices", None) or getattr(getattr(param, "type", None), "choices", None) or []
    return [v.value if isinstance(v, Enum) else str(v) for v in values]


def _number_range(param: Any) -> str:
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None and high is not None:
        return f"{low} to {high}"
    return f"at least {low}" if low is not None else f"at most {high}" if high is not None else ""


def _default(param: Any) -> str:
    if not getattr(param, "show_default", True) or getattr(param, "is_flag", False):
        return ""
    value = param.default
    if value is None or value == () or value == [] or callable(value):
        return ""
    return str(value.value if isinstance(value, Enum) else value)


def _param_help(param: Any) -> Text:
    help_text = " ".join(reflow(getattr(param, "help", None) or ""))
    choices = _choices(param)
    if choices and not any(choice in help_text for choice in choices):
        help_text += (" " if help_text else "") + "One of: " + ", ".join(choices) + "."
    extras = [f"default: {d}" for d in [_default(param)] if d] + [r for r in [_number_range(param)] if r]
    text = highlighter(Text(help_text))
    if extras:
        text.append(f" [{'; '.join(extras)}]", STYLES["extra"])
    if param.required:
        text.append(" [required]", STYLES["required"])
    return text


def _param_name(param: Any) -> Text:
    if isinstance(param, TyperArgument):
        return Text(_argument_name(param), STYLES["metavar"])
    opts = sorted(param.opts, key=lambda o: o.startswith("--"))
    text = Text(", ".join(opts), STYLES["option"])
    if param.secondary_opts:
        text.append(" / ").append(", ".join(param.secondary_opts), STYLES["option"])
    if word := metavar(param):
        text.append(" ").append(word, STYLES["metavar"])
    return text


def _name_width(rows: Iterable[tuple[Text, RenderableType]]) -> int:
    """The name column: as wide as the longest name that fits in NAME_WIDTH."""
    return max((name.cell_len for name, _ in rows if name.cell_len <= NAME_WIDTH), default=NAME_WIDTH)


def _rows(rows: list[tuple[Text, RenderableType]], width: int) -> Group:
    """Name and help side by side; a name too long for its column gets a line of its own."""
    parts: list[RenderableType] = []
    for name, help_text in rows:
        grid = Table.grid(padding=(0, 2), expand=True)
        grid.add_column(width=width, no_wrap=True)
        grid.add_column(ratio=1)
        if name.cell_len > width:
            parts.append(name)
            name = Text("")
        grid.add_row(name, help_text)
        parts.append(grid)
    return Group(*parts)


def _panel(title: str, body: RenderableType) -> Panel:
    return Panel(body, title=title, title_align="left", border_style="dim")


def _commands(group: Any, ctx: Any) -> list[tuple[Text, Text]]:
    rows = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is not None and not command.hidden:
            summary = command.short_help or (reflow(command.help)[0] if command.help else "")
            rows.append((Text(name, STYLES["option"]), highlighter(Text(summary))))
    return rows


def render_help(command: Any, ctx: Any) -> None:
    """Print a command's (or the root's) help: usage, description, arguments, options, commands, examples."""
    console = _console()
    console.print(Padding(_usage(command, ctx), (1, 1)))
    for paragraph in reflow(command.help or ""):
        console.print(Padding(highlighter(Text(paragraph)), (0, 1, 1, 1)))
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    arguments = [(_param_name(p), _param_help(p)) for p in params if isinstance(p, TyperArgument)]
    options = [(_param_name(p), _param_help(p)) for p in params if isinstance(p, TyperOption)]
    commands = _commands(command, ctx) if hasattr(command, "list_commands") else []
    width = _name_width(arguments + options + commands)  # the panels line up
    for title, rows in (("Arguments", arguments), ("Options", options), ("Commands", commands)):
        if rows:
            console.print(_panel(title, _rows(rows, width)))
    if command.epilog:
        lines = [highlighter(Text(line.strip())) for line in command.epilog.strip().splitlines() if line.strip()]
        console.print(_panel("Examples", Group(*lines)))


class HelpCommand(TyperCommand):
    """Every command's class: Typer's parsing, this module's help."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        render_help(self, ctx)
