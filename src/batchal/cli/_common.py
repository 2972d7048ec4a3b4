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
