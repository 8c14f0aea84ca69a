"""Batches of sampled and augmented patches, produced in-process or by background worker processes.

`make_loader(sampler, transforms, num_workers, seed, first_batch)` returns a `BatchLoader`: an iterator of
batch dicts (see `PatchSampler.sample_batch` and `autoseg.training.augmentation`). With `num_workers=0`
everything runs in the calling process (always works, easiest to debug). With workers, worker i produces
batches first_batch + i, first_batch + i + n, ... into its own bounded queue and the consumer reads the
queues in turn.

Failures are reported, not hidden: an exception in a worker is re-raised in the consumer as
`BackgroundWorkerError` carrying the worker's exception type, message and traceback text; a worker that
dies without a word (killed by a signal, e.g. the out-of-memory killer) is reported with its index and exit
code as soon as its pipe closes (the consumer keeps no sending end of it).

A worker whose consumer dies without closing it (SIGKILL, the out-of-memory killer) exits on its own
(`autoseg.processes.exit_when_gone`): with fork, sibling workers inherit each other's pipe ends, so a
worker blocked sending a batch would otherwise wait forever, holding its memory.

Seeding: batch k of a stream is a pure function of (seed, k), whatever the number of workers and whichever
batches were made before it. Its random states are derived from (seed, k) alone: the sampler's
`np.random.Generator`, and the global `np.random` and `random` states that batchgenerators' transforms draw
from, which are seeded just before the batch and given back to the caller after it (so the caller's global
random state is left untouched when `num_workers=0`). A run that resumes a stream at batch k (the trainer
keeps k in its checkpoints) therefore gets exactly the batches the uninterrupted run got.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import signal
import threading
import traceback
import weakref
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

import numpy as np

from autoseg.errors import BackgroundWorkerError
from autoseg.processes import exit_when_gone

# Batches buffered per worker: enough to hide jitter, small enough to bound memory (a 128^3 batch of 2 with
# one channel is 16 MB of data + 8 MB of seg).
DEFAULT_QUEUE_SIZE_PER_WORKER = 2
# How often a waiting consumer checks that its workers are still alive.
DEFAULT_POLL_INTERVAL_S = 0.5
# How long close() waits for workers to stop on their own before terminating them.
SHUTDOWN_GRACE_S = 3.0


class BatchProducer:
    """Makes batch k of the stream of `seed`: sample, then transform, from random states of (seed, k) alone."""

    def __init__(self, sampler, transforms: Callable[..., dict] | None, seed: int):
        self.sampler = sampler
        self.transforms = transforms
        self.seed = seed

    def make(self, index: int) -> dict:
        # 12 words from (seed, index): 4 each for the sampler's generator, np.random and random, so the three
        # never share a seed. Seeding per batch costs 0.1-0.3 ms, no more than giving the caller's states back.
        words = np.random.SeedSequence([self.seed % 2**64, index]).generate_state(12)
        rng = np.random.default_rng(words[:4])
        with _global_random_state(words[4:8], int.from_bytes(words[8:].tobytes(), "little")), \
                single_threaded_numerics():
            batch = self.sampler.sample_batch(rng)
            if self.transforms is not None:
                batch = self.transforms(**batch)
        return batch


@contextmanager
def _global_random_state(numpy_seed: np.ndarray, python_seed: int):
    """Seed the global `np.random` and `random` states for the duration, then give the caller's back."""
    caller_numpy, caller_python = np.random.get_state(), random.getstate()
    np.random.seed(numpy_seed)
    random.seed(python_seed)
    try:
        yield
    finally:
        np.random.set_state(caller_numpy)
        random.setstate(caller_python)


_THREADPOOL_CONTROLLER = None


def single_threaded_numerics():
    """Limit BLAS/OpenMP to one thread while a batch is made, as nnU-Net does for its augmentation.

    The coordinate rotations are small matrix products for which threads cost more than they bring
    (2x slower per batch measured on a busy 2-core machine), and workers are parallel already.
    Restored afterwards, so the caller's settings (e.g. torch's) are untouched. Needs threadpoolctl
    (installed with scikit-learn); without it nothing is limited.
    """
    global _THREADPOOL_CONTROLLER
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return nullcontext()
    if _THREADPOOL_CONTROLLER is None:
        _THREADPOOL_CONTROLLER = ThreadpoolController()
    return _THREADPOOL_CONTROLLER.limit(limits=1)


def _batch_indices(first: int, step: int, end: int | None) -> Iterator[int]:
    """first, first + step, ... below end (None: without end)."""
    index = first
    while end is None or index < end:
        yield index
        index += step


def _worker_main(worker_index: int, num_workers: int, first_batch: int, end_batch: int | None, sampler, transforms,
                 seed: int, connection, stop_event, consumer_pid: int) -> None:
    """Body of a worker process: send ("batch", dict) messages, or ("error", text) on failure, then return."""
    exit_when_gone(consumer_pid)
    # Ctrl-C goes to the whole process group; the consumer decides how to stop the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        producer = BatchProducer(sampler, transforms, seed)
        for index in _batch_indices(first_batch + worker_index, num_workers, end_batch):
            if stop_event.is_set():
                break
            connection.send(("batch", producer.make(index)))
    except BaseException as err:  # noqa: BLE001 - everything must reach the consumer
        text = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
        try:
            connection.send(("error", text))
        except OSError:
            pass  # the consumer is gone
    finally:
        connection.close()


def _pump(connection, local_queue: queue.Queue, stop_event) -> None:
    """Consumer-side thread per worker: receive messages into a bounded local queue.

    The end of the pipe ("eof") means the worker process is gone: the consumer holds no writing end, so a
    killed worker is noticed at once, even in the middle of a message. While stopping, messages are
    received and dropped, so that a worker blocked in send() can finish, see the stop event and exit.
    """
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            message = ("eof", None)
        if stop_event.is_set():
            if message[0] == "eof":
                break
            continue
        while not stop_event.is_set():
            try:
                local_queue.put(message, timeout=0.1)
                break
            except queue.Full:
                continue
        if message[0] != "batch":
            break
    connection.close()


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (often the out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
        return f"exit code {exitcode}, killed by {name}{hint}"
    return f"exit code {exitcode}"


def _shutdown(processes: list, threads: list, local_queues: list, stop_event) -> None:
    """Stop workers: ask, wait a little, then terminate. Safe to call twice and from a finalizer."""
    stop_event.set()
    for local_queue in local_queues:
        try:
            while True:
                local_queue.get_nowait()
        except queue.Empty:
            pass
    for process in processes:
        process.join(timeout=SHUTDOWN_GRACE_S)
        if process.is_alive():
            process.terminate()
            process.join(timeout=SHUTDOWN_GRACE_S)
    for thread in threads:
        thread.join(timeout=SHUTDOWN_GRACE_S)


class BatchLoader:
    """Iterator of batches first_batch, first_batch + 1, ... of the stream of `seed`; use as a context manager
    or call close() to stop the workers.

    num_batches=None gives an endless stream (training draws a fixed number of batches per epoch).
    next_index: the index of the batch `next()` returns (first_batch + batches delivered so far).
    """

    def __init__(self, sampler, transforms: Callable[..., dict] | None, num_workers: int, seed: int,
                 first_batch: int = 0, num_batches: int | None = None,
                 queue_size_per_worker: int = DEFAULT_QUEUE_SIZE_PER_WORKER,
                 poll_interval_s: float = DEFAULT_POLL_INTERVAL_S, start_method: str | None = None):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if first_batch < 0:
            raise ValueError(f"first_batch must be >= 0, got {first_batch}")
        self.num_workers = num_workers
        self.first_batch = first_batch
        self.end_batch = None if num_batches is None else first_batch + num_batches
        self.poll_interval_s = poll_interval_s
        self.next_index = first_batch
        self._closed = False
        self._producer = BatchProducer(sampler, transforms, seed) if num_workers == 0 else None
        self._processes: list = []
        self._local_queues: list = []
        self._threads: list = []
        self._finalizer = None
        if num_workers > 0:
            self._start_workers(sampler, transforms, seed, queue_size_per_worker, start_method)

    def _start_workers(self, sampler, transforms, seed, queue_size_per_worker, start_method) -> None:
        # fork (the Linux default) starts in milliseconds and shares the sampler without copying;
        # spawn works too when sampler and transforms are picklable (PreprocessedFolder holds only a path).
        context = multiprocessing.get_context(start_method)
        self._stop_event = context.Event()
        self._finalizer = weakref.finalize(self, _shutdown, self._processes, self._threads, self._local_queues,
                                           self._stop_event)
        receiving_ends = []
        for worker_index in range(self.num_workers):
            receiving, sending = context.Pipe(duplex=False)
            process = context.Process(
                target=_worker_main, name=f"autoseg-data-worker-{worker_index}", daemon=True,
                args=(worker_index, self.num_workers, self.first_batch, self.end_batch, sampler, transforms, seed,
                      sending, self._stop_event, os.getpid()),
            )
            process.start()
            # Closed here before the next fork, so the worker holds the only sending end: its death ends the pipe.
            sending.close()
            self._processes.append(process)
            receiving_ends.append(receiving)
        # Threads start after the last fork: forking a process that runs threads can copy a held lock.
        for worker_index, receiving in enumerate(receiving_ends):
            local_queue: queue.Queue = queue.Queue(maxsize=queue_size_per_worker)
            thread = threading.Thread(target=_pump, args=(receiving, local_queue, self._stop_event),
                                      name=f"autoseg-data-pump-{worker_index}", daemon=True)
            thread.start()
            self._local_queues.append(local_queue)
            self._threads.append(thread)

    def __iter__(self) -> "BatchLoader":
        return self

    def __next__(self) -> dict:
        if self._closed:
            raise StopIteration
        if self.end_batch is not None and self.next_index >= self.end_batch:
            self.close()
            raise StopIteration
        if self._producer is not None:
            batch = self._producer.make(self.next_index)
        else:
            batch = self._receive((self.next_index - self.first_batch) % self.num_workers)
        self.next_index += 1
        return batch

    def _receive(self, worker_index: int) -> dict:
        local_queue, process = self._local_queues[worker_index], self._processes[worker_index]
        while True:
            try:
                kind, payload = local_queue.get(timeout=self.poll_interval_s)
                break
            except queue.Empty:
                # The pump reports a dead worker; this only guards against a pump that cannot see it.
                if not process.is_alive() and not self._threads[worker_index].is_alive():
                    kind, payload = "eof", None
                    break
        if kind == "batch":
            return payload
        if kind == "error":
            self.close()
            raise BackgroundWorkerError(
                f"data-loading worker {worker_index} failed while making batch {self.next_index}:\n{payload}"
            )
        process.join(timeout=SHUTDOWN_GRACE_S)
        exitcode = process.exitcode
        self.close()
        raise BackgroundWorkerError(
            f"data-loading worker {worker_index} (pid {process.pid}) died without reporting an error: "
            f"{_describe_exit(exitcode)}. Try fewer workers or a smaller patch/batch if memory is short; "
            f"num_workers=0 runs the same pipeline in this process."
        )

    def close(self) -> None:
        """Stop and join the workers (idempotent)."""
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def make_loader(sampler, transforms: Callable[..., dict] | None, num_workers: int, seed: int, *,
                first_batch: int = 0, num_batches: int | None = None,
                queue_size_per_worker: int = DEFAULT_QUEUE_SIZE_PER_WORKER,
                poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
                start_method: str | None = None) -> BatchLoader:
    """Batches from `sampler.sample_batch(rng)` passed through `transforms(**batch)` (None: untransformed).

    num_workers: 0 runs in this process; n > 0 starts n worker processes (the batches are the same).
    seed, first_batch: the stream and the index of its first batch to deliver (a resumed run passes the
      number of batches it had drawn).
    num_batches: stop after this many; None for an endless stream.
    queue_size_per_worker: finished batches each worker may buffer (memory bound).
    start_method: multiprocessing start method; None uses the platform default (fork on Linux).
    """
    return BatchLoader(sampler, transforms, num_workers, seed, first_batch, num_batches,
                       queue_size_per_worker=queue_size_per_worker, poll_interval_s=poll_interval_s,
                       start_method=start_method)
