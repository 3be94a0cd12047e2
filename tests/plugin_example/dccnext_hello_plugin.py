"""A tiny third-party plugin: what a package ships to add `dccnext hello` through an entry point.

In its own pyproject.toml:

    [project.entry-points."dccnext_cli.commands"]
    hello = "dccnext_hello_plugin:hello"
"""

import typer


def hello(name: str = typer.Option("world", help="Who to greet.")) -> None:
    """Say hello from a plugin."""
    typer.echo(f"hello, {name}, from a dccnext plugin")
