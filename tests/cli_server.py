"""Run ``batchal`` commands as real processes, cheaply: forked from one warm interpreter.

Starting ``batchal`` costs about a second of imports; a table of a hundred bad
inputs would spend minutes on that alone. This server imports once, then forks
a child per command: the child has its own process, working directory, file
descriptors 1 and 2 redirected to files and its own exit code, and runs the
same entry point as the console script (``batchal.cli:app``), including
Python's handling of an uncaught exception (the traceback the tests look for).

Protocol: one JSON object per line on stdin (``argv``, ``cwd``, ``stdout``,
``stderr`` paths, optional ``timeout``); one JSON line back per command with
``rc`` (negative: killed by that signal).
"""
import json
import os
import signal
import sys
import time


def _child(case) -> int:
    os.chdir(case["cwd"])
    for fd, path in ((1, case["stdout"]), (2, case["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    from batchal.cli import app

    sys.argv = ["batchal", *case["argv"]]
    try:
        app(prog_name="batchal")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:  # what the interpreter does with an uncaught exception
        sys.excepthook(*sys.exc_info())
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main() -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    # warm, thread-free imports shared by every child (faiss/OpenMP is left to the children)
    import numpy  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import scipy.cluster.hierarchy  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import batchal.cli  # noqa: F401
    import batchal.io  # noqa: F401

    for line in sys.stdin:
        case = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(case)
            finally:
                os._exit(code)
        deadline = time.monotonic() + case.get("timeout", 120)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = -1
                break
            time.sleep(0.005)
        rc = -999 if status == -1 else (os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status))
        print(json.dumps({"rc": rc}), flush=True)


if __name__ == "__main__":
    main()
