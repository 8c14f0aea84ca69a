"""Processes that end with the process they work for: every process autoseg starts calls `exit_when_gone`.

A process killed with SIGKILL (by a user, or the out-of-memory killer) runs no cleanup, so it cannot stop
its workers: they must notice by themselves. Left alone they would go on writing results nobody
records, then wait forever on a queue, each holding its memory. So every worker watches the process
it works for and ends itself, without cleanup, within PARENT_CHECK_INTERVAL_S of its death:

    process_pool(workers)                      a spawn ProcessPoolExecutor whose workers watch this process
    exit_when_gone(parent_pid)                 the first call of a worker started another way (training's data workers)
    exit_with_torchrun(launcher_pid)           the first call of a torchrun rank (see its docstring)

How a process is seen to be gone: a parent, exactly, by the re-parenting of its orphans (the kernel
does it at the parent's death, before anyone reaps it); any other process by asking the kernel for
it (on Linux a zombie counts as gone; elsewhere a zombie counts as running until its parent reaps it).
A daemon thread that polls works alike on Linux and macOS, whatever thread started the worker. Linux's
prctl(PR_SET_PDEATHSIG) is not used: it fires when the *thread* that started the worker exits, which
would kill the workers of a pool started from a thread that ends before the pool does.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor

# How often a worker checks the processes it works for, hence about the longest it goes on after their
# death: a case it was writing may still be finished in that time (each file is written atomically, and
# a rerun skips a finished case), no further one is.
PARENT_CHECK_INTERVAL_S = 0.2
# The exit code of a worker that ended because the process it worked for is gone.
ORPHAN_EXIT_CODE = 1


def exit_when_gone(*pids: int, interval_s: float = PARENT_CHECK_INTERVAL_S) -> None:
    """End this process as soon as any of `pids` has ended: at once if one already has, else from a
    daemon thread that checks every `interval_s` seconds. Ends it with os._exit: no cleanup, no
    finalizer, for the work in flight belongs to nobody."""
    parent_at_start = os.getppid()

    def any_gone() -> bool:
        return any(_has_ended(pid, parent_at_start) for pid in pids)

    if any_gone():
        os._exit(ORPHAN_EXIT_CODE)

    def watch() -> None:
        while not any_gone():
            time.sleep(interval_s)
        os._exit(ORPHAN_EXIT_CODE)

    threading.Thread(target=watch, name="autoseg-exit-when-gone", daemon=True).start()


def _has_ended(pid: int, parent_at_start: int) -> bool:
    if pid == parent_at_start:
        return os.getppid() != pid  # re-parented: the parent has died
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has ended, unreaped
    except OSError:
        return False  # no /proc (macOS), or it ended just now: the next check sees it


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` processes that end when this process ends.

    Spawn, on every platform: a worker starts as a fresh interpreter (about a second), never as a fork
    of this process, whose threads (torch's, a predictor's readers) could hold a lock the fork copies.
    The functions given to the pool must be importable (module level) and their arguments picklable.
    """
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=exit_when_gone, initargs=(os.getpid(),))


def exit_with_torchrun(launcher_pid: int | None) -> None:
    """In a rank started by torchrun, before anything else (init_process_group may wait long for the other
    ranks): end it when torchrun's agent (its parent) ends, or `launcher_pid`, the process that started
    torchrun (`autoseg train --gpus N`; None when torchrun was started by hand).

    torchrun starts each rank in a session of its own, so nothing else stops a rank whose agent was
    killed, nor an agent whose launcher was: both would train on. When a rank ends this way, the agent,
    if still there, stops the other ranks and exits.
    """
    exit_when_gone(os.getppid(), *(() if launcher_pid is None else (launcher_pid,)))
