"""A complete third-party plugin: a package that adds `dccnext hello` through an entry point.

Its pyproject.toml (beside this file) declares the command:

    [project.entry-points."dccnext_cli.commands"]
    hello = "dccnext_hello_plugin:hello"

`pip install ./examples/plugin`, then `dccnext hello --name ada`. A command does its heavy imports (torch,
the model) inside the function, so `dccnext --help` stays instant with the plugin installed.
"""

import typer


def hello(name: str = typer.Option("world", help="Who to greet.")) -> None:
    """Say hello from a plugin."""
    typer.echo(f"hello, {name}, from a dccnext plugin")
