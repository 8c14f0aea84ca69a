"""What every command shares: the Typer app, the workspace option, one-line errors and option parsing."""

from __future__ import annotations

import functools
from pathlib import Path

import typer

from autoseg.errors import AutosegError
from autoseg.workspace import DEFAULT_HOME, Workspace

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Self-configuring medical image segmentation for Decathlon-format datasets.")


class _State:
    workspace = Workspace(DEFAULT_HOME)
    debug = False


state = _State()


@app.callback()
def main(
    home: Path = typer.Option(DEFAULT_HOME, "--home", envvar="AUTOSEG_HOME",
                              help="Workspace folder (raw/, preprocessed/, results/)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    state.workspace = Workspace(home)
    state.debug = debug


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def command(*args, **kwargs):
    """Register a command whose AutosegErrors become one-line messages (tracebacks with --debug)."""

    def register(function):
        @functools.wraps(function)
        def wrapper(*a, **k):
            try:
                return function(*a, **k)
            except AutosegError as e:
                if state.debug:
                    raise
                fail(str(e))
            except KeyboardInterrupt:
                fail("interrupted", 130)

        return app.command(*args, **kwargs)(wrapper)

    return register


def parse_numbers(text: str, kind: type, option: str, expected: str) -> list:
    """The comma-separated numbers of an option's value; an error naming the option otherwise."""
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        fail(f"{option}: expected {expected}, got {text!r}")
