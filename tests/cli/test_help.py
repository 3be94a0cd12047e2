"""Help that reads at 80 columns: whole option names, one metavar style, choices once, reflowed paragraphs,
and examples that parse."""

from __future__ import annotations

import re
import shlex

import pytest
import typer
from typer.testing import CliRunner

from dccnext_cli.cli.app import build_app
from dccnext_cli.models.config import VARIANTS

APP = build_app()
ROOT = typer.main.get_command(APP)
COMMANDS = sorted(ROOT.commands)


def _help(*args: str, columns: int = 80) -> str:
    result = CliRunner().invoke(APP, [*args, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_name_is_whole_at_80_columns(name):
    text = _help(name)
    assert max(len(line) for line in text.splitlines()) <= 80
    words = set(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", text))
    for param in ROOT.commands[name].params:
        for opt in [*param.opts, *param.secondary_opts]:
            if opt.startswith("-"):
                assert opt in words, f"{name}: {opt} is cut off or missing"
    assert "…" not in text


@pytest.mark.parametrize("name", COMMANDS)
def test_one_metavar_style_and_examples_last(name):
    text = _help(name)
    assert not re.search(r"<(bool|str|int|float|path|file|dir|list)", text), "a Typer-style <type> metavar"
    assert "{" not in text.splitlines()[1]  # usage: IMAGE..., not {images}...
    examples = text[text.rindex("Examples"):]
    lines = [line.strip("│ ") for line in examples.splitlines()[1:] if line.strip("│╰─ ")]
    assert lines and all(line.startswith(f"dccnext {name}") for line in lines if line.startswith("dccnext"))


@pytest.mark.parametrize("name", COMMANDS)
def test_examples_parse(name):
    command = ROOT.commands[name]
    for line in command.epilog.strip().splitlines():
        argv = shlex.split(line, comments=True)
        assert argv[:2] == ["dccnext", name]
        with command.make_context(name, argv[2:]) as ctx:  # unknown options and bad values raise here
            assert ctx.params


def test_arguments_read_the_same_in_every_command():
    for name in ("predict", "visualize-clusters"):
        usage = _help(name).splitlines()[1].strip()
        assert usage == f"Usage: dccnext {name} [OPTIONS] IMAGE..."


def test_choices_are_listed_once():
    text = _help("train")
    assert text.count(", ".join(VARIANTS)) == 1 and "b0|b1" not in text
    assert "--variant VARIANT" in text and "--task TASK" in text


def test_paragraphs_reflow_to_the_width():
    wide = _help("train", columns=100)
    line = next(line for line in wide.splitlines() if "With no --data:" in line)
    assert len(line.rstrip()) > 90  # the docstring's own line breaks are gone


def test_eval_data_says_what_it_scores():
    text = _help("eval", columns=100)
    assert "Images to score" in text and "train on" not in text


def test_root_lists_each_command_in_one_line():
    text = _help(columns=100)
    for name in COMMANDS:
        row = next(line for line in text.splitlines() if line.strip("│ ").startswith(name + " "))
        assert row.rstrip(" │").endswith(".")  # the first sentence only, on one line
    assert "<bool>" not in text and "--version" in text
