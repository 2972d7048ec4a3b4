"""What every command shares: the Typer app, the two consoles and the error exit."""
from __future__ import annotations

from enum import Enum
from pathlib import Path

import numpy as np
import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Batch active learning at scale: pick the next batch to label (Cluster-Margin and baselines).",
)
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _fail(msg: str, code: int = 2):
    err.print(f"[bold red]error:[/] {msg}", highlight=False)
    raise typer.Exit(code)


class Metric(str, Enum):
    cosine = "cosine"
    euclidean = "euclidean"
    sqeuclidean = "sqeuclidean"


class EngineName(str, Enum):
    local = "local"
    ray = "ray"


ENGINE_HELP = "local: this process (default); ray: a Ray cluster (pip install \"batchal[ray]\")"
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
        atomic_write(path, lambda tmp: np.save(tmp, labels.astype(np.int64)))
    else:
        atomic_write(path, lambda tmp: np.savetxt(tmp, labels, fmt="%d", header="cluster", comments=""))
