"""Joining or starting Ray, and turning task failures back into batchal errors."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os

from ..._validation import BatchalInputError


def import_ray():
    """``ray``, or a :class:`BatchalInputError` saying how to install it (the core never needs it)."""
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the environment
        raise BatchalInputError('the ray engine needs Ray: pip install "batchal[ray]"') from None
    return ray


class RaySession:
    """A Ray connection: joins ``address``, reuses an initialised Ray, or starts a local instance.

    Only an instance this object started is shut down by :meth:`close`.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 object_store_memory: int | None = None):
        ray = import_ray()
        self.started = False
        if ray.is_initialized():
            return
        if address is not None:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise BatchalInputError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), object_store_memory=object_store_memory,
                     include_dashboard=False, log_to_driver=False)
            self.started = True

    @staticmethod
    def cpus() -> int:
        ray = import_ray()
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    @staticmethod
    def gpus() -> int:
        ray = import_ray()
        return int(ray.cluster_resources().get("GPU", 0))

    def close(self) -> None:
        if self.started:
            import_ray().shutdown()
            self.started = False


def _input_error(exc: BaseException):
    """The BatchalInputError a (possibly wrapped) Ray failure carries, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, BatchalInputError) and type(exc).__module__.startswith("batchal"):
            return exc
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            exc = cause
            continue
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def input_errors():
    """Re-raise a BatchalInputError raised inside a Ray task or actor as itself (one clean message)."""
    try:
        yield
    except BatchalInputError as exc:
        inner = _input_error(exc)
        if inner is not None and inner is not exc:
            raise BatchalInputError(str(inner.args[0]) if inner.args else str(inner)) from None
        if type(exc) is BatchalInputError:
            raise
        raise BatchalInputError(str(exc.args[0]) if exc.args else str(exc)) from None
    except Exception as exc:
        inner = _input_error(exc)
        if inner is None:
            raise
        raise BatchalInputError(str(inner.args[0]) if inner.args else str(inner)) from None


def lost_worker(exc: BaseException) -> bool:
    """Did ``exc`` come from a dead worker (an actor's or a task's process, or its node), however wrapped?

    Those failures are the cluster's, not the job's: the stage can run again and
    give the same answer. Errors raised by batchal's own code are not.
    """
    import ray.exceptions as rx

    lost = (rx.RayActorError, rx.WorkerCrashedError, rx.ObjectLostError, rx.NodeDiedError, rx.OwnerDiedError)
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, lost):
            return True
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return False


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another C library)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


#: Blocks from this size on are mapped on their own by glibc's malloc, and unmapped when freed.
MMAP_THRESHOLD = 1 << 20


def fixed_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> None:
    """Fix glibc's mmap threshold at ``nbytes`` in this process (``mallopt``; elsewhere nothing).

    glibc raises the threshold, up to 32 MB, each time a mapped block is freed, so
    the many few-MB temporaries of a RAC actor's push, propose and match calls come
    from the heap after the first rounds and their freed pages stay resident (those
    calls are not trimmed: :func:`trim_heap` after each cost CPU). Fixed, they are
    mapped and given back when freed; setting it also stops the trim threshold's rise.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, int(nbytes))  # M_MMAP_THRESHOLD


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim(0)``; elsewhere nothing).

    An actor's numpy temporaries below glibc's mmap threshold (which rises to
    32 MB as large blocks are freed) come from the heap, whose freed pages stay
    resident until trimmed: called after every RAC actor method, at 300K rows it took
    about 30 MB off each RAC actor at the HAC's peak (issue 23). Milliseconds a call
    (it walks the heap's free chunks): for an actor's heavy methods, not its many small ones.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def trimmed(fn):
    """An actor method that calls :func:`trim_heap` once it has run."""
    @functools.wraps(fn)
    def run(*args, **kw):
        try:
            return fn(*args, **kw)
        finally:
            trim_heap()

    return run
