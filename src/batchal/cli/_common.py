"""What every command shares: the Typer app, the two consoles, the error exit and option checks.

The error contract: anything the user can fix (a bad option value, a missing or
unreadable input, an unwritable output) ends with exit code 2 and a single
``error: ...`` line on stderr naming the option or file; nothing is written.
"""
from __future__ import annotations

import math
import re
import sys
from enum import Enum
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from .._validation import BatchalInputError

# the click exceptions typer raises (recent typer versions vendor their own click)
_clicks = sys.modules[typer.BadParameter.__module__]

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _error_line(msg: str) -> None:
    # one line, and never rich markup: messages quote user text such as "[1, 2]"
    err.print(f"[bold red]error:[/] {escape(' '.join(str(msg).split()))}", highlight=False)


class _Group(TyperGroup):
    """Typer's group with one-line errors: usage errors and input errors alike.

    Click reports a bad option value in a multi-line panel; here it is one
    ``error:`` line naming the option, with exit code 2, like every input error.
    An input error that escapes a command is reported the same way.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except getattr(_clicks, "NoArgsIsHelpError", ()) as exc:  # a bare command: its help, as before
            print(exc.format_message(), file=sys.stderr)
            sys.exit(exc.exit_code)
        except _clicks.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            usage = isinstance(exc, _clicks.UsageError) and ctx is not None
            _error_line(exc.format_message() + (f" (see '{ctx.command_path} --help')" if usage else ""))
            sys.exit(exc.exit_code)
        except typer.Abort:
            print("Aborted!", file=sys.stderr)
            sys.exit(1)
        except BatchalInputError as exc:
            _error_line(str(exc))
            sys.exit(2)
        sys.exit(rv if isinstance(rv, int) else 0)

    def get_command(self, ctx, cmd_name):
        return _flags_without_metavar(super().get_command(ctx, cmd_name), ctx)


class _SubGroup(TyperGroup):
    """A sub-command group (``batchal campaign``): its commands' flags shown without a value too."""

    def get_command(self, ctx, cmd_name):
        return _flags_without_metavar(super().get_command(ctx, cmd_name), ctx)


def _flags_without_metavar(cmd, ctx):
    """Flags take no value: show none in the help (typer prints "<bool>")."""
    if cmd is not None:
        for prm in [*cmd.params, cmd.get_help_option(ctx)]:
            if prm is not None and getattr(prm, "is_flag", False) and prm.metavar is None:
                prm.metavar = ""
    return cmd


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    help="Batch active learning at scale: pick the next batch to label (Cluster-Margin and baselines).",
)


def _fail(msg: str, code: int = 2):
    _error_line(msg)
    raise typer.Exit(code)


#: Library parameter names and the options that carry them (library messages name the former).
_OPTION_OF = {"probs": "--probs", "logits": "--logits", "embeddings": "--embeddings", "clusters": "--clusters",
              "labeled": "--labeled", "batch_size": "--batch-size"}
_PARAM_RE = re.compile(r"(?<![-\w.])(" + "|".join(_OPTION_OF) + r")(?![\w.-])")


def option_names(msg: str) -> str:
    """A library message in the options' words: ``probs contains NaN`` -> ``--probs contains NaN``.

    A message that starts with an option is left alone: those come from the CLI's own
    checks or the file readers and may quote paths, which must stay as they are.
    """
    return msg if msg.startswith("--") else _PARAM_RE.sub(lambda m: _OPTION_OF[m[1]], msg)


def finite(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False):
    """An option callback accepting a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``).

    Click's float ranges let ``nan`` through (every comparison with it is false).
    """
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"<= {hi:g}")
    want = "a finite number" + (" " + " and ".join(parts) if parts else "")

    def check(value):
        if value is None:
            return value
        if (not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo))
                or (hi is not None and value > hi)):
            raise typer.BadParameter(f"must be {want}; got {value:g}")
        return value

    return check


#: Every command's ``--seed``: the same default everywhere, so a run is reproducible unless asked otherwise.
DEFAULT_SEED = 0
SEED_HELP = "random seed: the same seed gives the same result"
QUIET_HELP = "print only errors and warnings: no progress, no summary (files are written all the same)"


class Metric(str, Enum):
    cosine = "cosine"
    euclidean = "euclidean"
    sqeuclidean = "sqeuclidean"


class EngineName(str, Enum):
    local = "local"
    ray = "ray"


# "\\[" escapes the bracket from rich markup, which would otherwise take "[ray]" for a style and drop it
ENGINE_HELP = "local: this process (default); ray: a Ray cluster (pip install \"batchal\\[ray]\")"
CHECKPOINT_HELP = ("ray engine: where the completed stages and RAC rounds are checkpointed, on storage every node "
                   "reaches (default: beside --out, <out>.ray-checkpoint); removed when the job completes")
RESUME_HELP = ("ray engine: continue a killed job of the same pool and options from its last completed stage or "
               "round (the checkpoint directory); without it a job starts over")
RAY_ADDRESS_HELP = "Ray cluster to join (e.g. auto, ray://head:10001); default: a local Ray instance with this machine's CPUs"


def _engine(engine: "EngineName", ray_address, quiet: bool):
    """The engine the options ask for; errors exit 2 with one line."""
    from .._validation import BatchalInputError
    from ..engines import get_engine

    try:
        eng = get_engine(engine.value, address=ray_address)
    except BatchalInputError as exc:
        _fail(str(exc))
    if not quiet and engine.value == "ray":
        err.print(f"engine: ray ({'joined ' + ray_address if ray_address else 'local instance'}, "
                  f"{eng._actors()} CPUs)", highlight=False)
    return eng


class Method(str, Enum):
    auto = "auto"
    exact = "exact"
    graph = "graph"


def _save_ints(path: Path, labels: np.ndarray) -> None:
    from ..io import atomic_write

    if path.suffix.lower() == ".npy":
        atomic_write(path, lambda tmp: np.save(tmp, labels.astype(np.int64)), name="--out")
    else:
        atomic_write(path, lambda tmp: np.savetxt(tmp, labels, fmt="%d", header="cluster", comments=""), name="--out")
