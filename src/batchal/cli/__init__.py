"""The ``batchal`` command-line tool: parses options, calls the services, prints.

Each command group lives in its own module; importing them registers the
commands on the one Typer ``app``.
"""
from ._common import app
from . import cluster, dedup, select, similar, simulate  # noqa: F401  (registers the commands)
from . import campaign  # noqa: F401  (registers `batchal campaign ...`)

__all__ = ["app", "main"]


def main():  # pragma: no cover
    app()
