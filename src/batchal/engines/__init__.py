"""Execution engines: where the heavy, data-parallel steps run.

``local`` (the default) runs everything in this process with numpy, numba and
faiss. ``ray`` runs scoring and selection, the kNN graph and the graph HAC on a
Ray cluster (``pip install "batchal[ray]"``), for pools one machine cannot hold.
Both expose the same methods, so the CLI, the API and a campaign call an engine
without knowing which one it is::

    with get_engine("ray", address="auto") as eng:
        model = eng.cluster(X, mean_cluster_size=10)
        batch = eng.select("cluster-margin", 100_000, predictions="preds/", clusters=model.labels_)

Results are the same on both engines for the same inputs and seed (the tests
assert it): the same batch, the same neighbour lists, the same merge tree.
"""
from __future__ import annotations

from .._validation import BatchalInputError
from .base import Engine
from .local import LocalEngine

__all__ = ["Engine", "LocalEngine", "get_engine", "check_strategy", "ENGINES"]

ENGINES = ("local", "ray")


def get_engine(name: str = "local", *, address: str | None = None, **options) -> Engine:
    """An engine by name.

    Parameters
    ----------
    name : {"local", "ray"}
    address : str, optional
        Ray only: the cluster to connect to (``"auto"``, ``"ray://host:10001"``, ...).
        Without it a local Ray instance is started with this machine's CPUs
        (or Ray is used as already initialised in this process).
    **options
        Ray only: ``num_cpus``, ``object_store_memory``, ``num_actors`` (see
        :class:`batchal.engines.ray.RayEngine`).
    """
    if name == "local":
        if address is not None:
            raise BatchalInputError("--ray-address is only for --engine ray")
        if options:
            raise BatchalInputError(f"the local engine takes no options; got {', '.join(sorted(options))}")
        return LocalEngine()
    if name == "ray":
        from .ray import RayEngine

        return RayEngine(address=address, **options)
    raise BatchalInputError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")


def check_strategy(engine, strategy) -> None:
    """Refuse a strategy the engine does not run, naming it and the way out.

    Parameters
    ----------
    engine : Engine or {"local", "ray"}
        A name is checked without creating the engine, so a command refuses
        before it starts (or joins) a Ray instance.
    strategy : str or StrategySpec
    """
    from ..selectors.spec import parse_spec

    if not isinstance(engine, (str, Engine)):
        raise BatchalInputError(f"engine must be an Engine or a name ({', '.join(ENGINES)}); "
                                f"got {type(engine).__name__}")
    spec = parse_spec(strategy)
    name = engine if isinstance(engine, str) else engine.name
    if name == "ray":
        from .ray.select import check_ray_strategy

        check_ray_strategy(spec)
    elif isinstance(engine, str) and name not in ENGINES:
        raise BatchalInputError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")
    elif not isinstance(engine, str) and engine.strategies is not None and spec.name not in engine.strategies:
        raise BatchalInputError(f"strategy {spec.name!r} does not run on the {name} engine (it runs "
                                f"{', '.join(engine.strategies)}); use --engine local")
