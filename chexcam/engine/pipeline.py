"""Streaming stages for the per-image tools: worker processes ahead of the model and behind it, in order.

A tool's speed should be set by the model, not by decoding, drawing and PNG encoding around it. Paddle
Inference holds the GIL while it runs a batch (measured with paddle 3.3: a Python thread beside
``predictor.run()`` gets about 1% of a core), so threads cannot overlap the image work with the model, and
neither can a process pool that needs helper threads in the parent to hand out tasks and collect results
(``concurrent.futures``, ``multiprocessing.Pool``): they stall for the length of every batch. :class:`Stages`
therefore forks its own workers and talks to them only from the calling thread, before and after each
batch: tasks are small messages queued ahead (``fn(context, arg, shelf)``, a module-level function, the
read-only ``context`` inherited by ``fork``, never pickled), and the big arrays a task makes or reads (the
preprocessed crops, the image shrunk to tile size) travel through a *shelf*, a slot of a shared-memory arena,
so a worker never waits for the parent to read its result. Results are yielded in input order with at most
``ahead`` calls in flight (memory stays flat in the number of images): every output is the serial path's.
``processes=0`` is that serial path: the same functions, called in the calling thread.

Workers ignore Ctrl-C: the parent stops submitting, tells the workers to skip the calls that are only
decoding (:meth:`Stages.map` ``cancellable``), and lets the ones that write files finish (outputs are written
to a temporary name and renamed), so what was written is whole.

Under ``python -m paddle.distributed.launch`` each process is one rank; :func:`dist_env` reads its place,
:func:`shard` picks its share of the inputs and :func:`gather` brings per-rank results together.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ChexcamError
from ..serving import cpu_count

logger = logging.getLogger(__name__)

_ALIGN = 64


def native_threads() -> Optional[int]:
    """Threads of this process as the kernel sees them (paddle's and OpenMP's too), or ``None`` off Linux."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


#: the threads this process had when the pipeline was imported (paddle's own, idle at that point). Forking is
#: safe only while no thread has been added since: a thread pool started by a paddle op, OpenCV or a notebook
#: may hold a lock at the moment of the fork, and the child would wait on it forever.
_IMPORT_THREADS = native_threads()


def fork_is_safe() -> bool:
    """Whether this process may fork workers now: no thread has been started since the pipeline was imported
    (the tools fork first thing; a notebook or a test process that has run paddle usually may not)."""
    now = native_threads()
    return now is None or _IMPORT_THREADS is None or now <= _IMPORT_THREADS


def workers_for(setting: int) -> int:
    """``infer.workers`` -> a process count: ``0`` means one per CPU this process may use."""
    return int(setting) if setting and setting > 0 else cpu_count()


@dataclass(frozen=True)
class Stored:
    """An array left on a shelf: where it is in the slot (workers), or the array itself (serial path, or an
    array too large for the slot, which then travels pickled)."""

    offset: int = -1
    dtype: str = ""
    shape: Tuple[int, ...] = ()
    array: Optional[np.ndarray] = None


class Shelf:
    """The slot of the shared arena a task may write its big arrays to (or nothing: keep references)."""

    def __init__(self, buf: Optional[memoryview] = None):
        self.buf, self.used = buf, 0

    def put(self, a: np.ndarray) -> Stored:
        a = np.ascontiguousarray(a)
        if self.buf is None or self.used + a.nbytes > len(self.buf):
            return Stored(array=a)
        view = np.frombuffer(self.buf, dtype=a.dtype, count=a.size, offset=self.used).reshape(a.shape)
        view[...] = a
        st = Stored(self.used, a.dtype.str, tuple(a.shape))
        self.used += -(-a.nbytes // _ALIGN) * _ALIGN
        return st

    def get(self, st: Stored) -> np.ndarray:
        """The array (a view into the slot: copy it before the slot is given to another task)."""
        if st.array is not None:
            return st.array
        count = int(np.prod(st.shape)) if st.shape else 1
        return np.frombuffer(self.buf, dtype=np.dtype(st.dtype), count=count, offset=st.offset).reshape(st.shape)


def _worker(tasks, results, lock, stop, context, arena, slot_bytes) -> None:
    """A worker's life: take ``(tid, fn, arg, slot, cancellable)``, run ``fn``, send ``(tid, ok, value)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what stops, and when
    # no cv2.setNumThreads() here: in a child forked while OpenCV's thread pool exists it waits forever on the
    # parent's pool (measured with opencv 5.0); OpenCV's own calls work in the child.
    view = memoryview(arena) if arena is not None else None
    while True:
        try:
            msg = tasks.get()
        except EOFError:  # the parent has gone
            return
        if msg is None:
            return
        tid, fn, arg, slot, cancellable = msg
        if cancellable and stop.is_set():
            out = (tid, True, None)
        else:
            shelf = Shelf(None if slot is None else view[slot * slot_bytes:(slot + 1) * slot_bytes])
            try:
                out = (tid, True, fn(context, arg, shelf))
            except BaseException as exc:  # sent back and raised by the parent, in order
                out = (tid, False, exc)
        with lock:
            try:
                results.send(out)
            except Exception as exc:  # an unpicklable value or exception
                results.send((tid, False, ChexcamError(f"worker result could not be sent: {exc!r}")))


def _widen(fd: int, size: int = 1 << 20) -> None:
    """Give a pipe ``size`` bytes of buffer (Linux; 64 kB by default), so the parent queues every task in
    flight without waiting for a worker to read; elsewhere, or above the system's limit, it stays as it is."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (ImportError, OSError):
        pass


class Stages:
    """A pool of ``processes`` forked workers sharing ``context``, or none (``processes=0``: the serial path).

    ``slots`` slots of ``slot_bytes`` each form the shared arena for big arrays (:class:`Shelf`). With
    ``fork_check`` (the default) a process that has started threads since the pipeline was imported runs the
    stages serially instead (a WARNING says so): ``fork_check=False`` is for workers that touch no library
    with thread pools of its own (the tests of this class). Create the
    pool before building a predictor: the workers are forked at once, while the parent has no inference
    threads yet. Use as a context manager.
    """

    def __init__(self, processes: int, context: Any, slot_bytes: int = 0, slots: int = 0,
                 fork_check: bool = True):
        self.context = context
        self.processes = max(0, int(processes))
        self.slot_bytes = -(-int(slot_bytes) // _ALIGN) * _ALIGN
        self._arena = None
        self._free: List[int] = []
        self._done: Dict[int, Tuple[bool, Any]] = {}
        self._dropped: set = set()  # tasks whose results nobody will collect
        self._next = 0
        self._procs: list = []
        if not self.processes:
            return
        if fork_check and not fork_is_safe():
            logger.warning("infer.workers=%d ignored: this process already runs %d threads (paddle, OpenCV or a "
                           "notebook started them), and a forked worker could wait forever on a lock one of them "
                           "held; running the stages serially (tools/infer_cam.py forks before any of them)",
                           self.processes, native_threads())
            self.processes = 0
            return
        ctx = multiprocessing.get_context("fork")
        if self.slot_bytes and slots:
            self._arena = mmap.mmap(-1, self.slot_bytes * slots)  # anonymous and shared with forked children
            self._free = list(range(slots - 1, -1, -1))
        self._tasks = ctx.SimpleQueue()  # put() writes from this thread: no feeder thread, no GIL wait
        _widen(self._tasks._writer.fileno())  # room for every task in flight: put() never waits
        self._results, writer = ctx.Pipe(duplex=False)
        _widen(writer.fileno())
        self._lock, self._stop = ctx.Lock(), ctx.Event()
        for _ in range(self.processes):
            p = ctx.Process(target=_worker, args=(self._tasks, writer, self._lock, self._stop, context, self._arena,
                                                  self.slot_bytes), daemon=True)
            p.start()
            self._procs.append(p)
        writer.close()

    # -- slots -------------------------------------------------------------------------------------------
    def new_slot(self) -> Optional[int]:
        """A free slot of the arena, or ``None`` (no arena, or all in use: arrays then travel pickled)."""
        return self._free.pop() if self._free else None

    def free_slot(self, slot: Optional[int]) -> None:
        if slot is not None:
            self._free.append(slot)

    def shelf(self, slot: Optional[int]) -> Shelf:
        if slot is None or self._arena is None:
            return Shelf(None)
        return Shelf(memoryview(self._arena)[slot * self.slot_bytes:(slot + 1) * self.slot_bytes])

    # -- tasks -------------------------------------------------------------------------------------------
    def submit(self, fn: Callable[[Any, Any, Shelf], Any], arg: Any, slot: Optional[int] = None,
               cancellable: bool = False) -> int:
        """Queue ``fn(context, arg, shelf of slot)``; returns its id for :meth:`collect`."""
        tid, self._next = self._next, self._next + 1
        if self.processes:
            self._check_workers()
        if not self.processes:
            try:
                self._done[tid] = (True, fn(self.context, arg, Shelf(None)))
            except Exception as exc:
                self._done[tid] = (False, exc)
            return tid
        self._tasks.put((tid, fn, arg, slot, cancellable))
        return tid

    def collect(self, tid: int) -> Any:
        """The value of task ``tid`` (waiting for it); its exception is raised here."""
        while tid not in self._done:
            while not self._results.poll(1.0):
                self._check_workers()
            got, ok, value = self._results.recv()
            if got in self._dropped:
                self._dropped.discard(got)
            else:
                self._done[got] = (ok, value)
        ok, value = self._done.pop(tid)
        if not ok:
            raise value
        return value

    def _check_workers(self) -> None:
        dead = [p for p in self._procs if not p.is_alive()]
        if dead:
            raise ChexcamError(f"a worker process died (exit code {dead[0].exitcode}) while decoding or writing; "
                               "run again with -o infer.workers=1 to see where")

    def map(self, fn: Callable[[Any, Any, Shelf], Any], inputs: Iterable[Tuple[Any, Optional[int]]], ahead: int,
            cancellable: bool = False, finish_on_interrupt: bool = False) -> Iterator[Any]:
        """``fn(context, arg, shelf)`` for each ``(arg, slot)`` input, yielded in input order, at most ``ahead``
        calls in flight. ``cancellable``: calls not started when the consumer stops or Ctrl-C comes are
        skipped. ``finish_on_interrupt``: a Ctrl-C (here or in ``inputs``) first collects the calls already
        submitted and yields their results, then goes on."""
        ahead = max(1, int(ahead)) if self.processes else 1
        pending: List[int] = []

        def oldest():  # the oldest result, taken off the list only once it is in hand (Ctrl-C may come in between)
            value = self.collect(pending[0])
            pending.pop(0)
            return value

        try:
            try:
                for arg, slot in inputs:
                    pending.append(self.submit(fn, arg, slot, cancellable))
                    while len(pending) >= ahead:
                        yield oldest()
            except KeyboardInterrupt:
                if not finish_on_interrupt:
                    raise
                logger.warning("interrupted: finishing the %d images already under way", len(pending))
                while pending:
                    yield oldest()
                raise
            while pending:
                yield oldest()
        finally:
            if pending and cancellable and self.processes:
                self._stop.set()  # the rest only decodes: skip it (the pool is being left)
            for tid in pending:  # results that will not be used are dropped when they come
                if self._done.pop(tid, None) is None:
                    self._dropped.add(tid)

    def close(self) -> None:
        if not self._procs:
            return
        self._stop.set()
        for _ in self._procs:
            self._tasks.put(None)
        for p in self._procs:
            p.join(timeout=60)  # a worker writing a file finishes it
            if p.is_alive():
                p.terminate()
                p.join()
        self._procs = []
        self._results.close()
        if self._arena is not None:
            try:
                self._arena.close()
            except BufferError:  # an array still looks into it: it goes when the last view does
                pass
            self._arena = None

    def __enter__(self) -> "Stages":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def steady_rate(times: Sequence[float], skip: int) -> Optional[float]:
    """Items per second once the pipeline is full: ``times[i]`` is when item ``i`` was done (the items of a
    batch may share one time); the first and the last ``skip`` items are left out (the model compiling its
    batch shape and the first batch decoding; the last batch draining). ``None`` for too few items."""
    n = len(times)
    if n <= 2 * skip + 1:
        return None
    a, b = times[max(skip - 1, 0)], times[n - skip - 1]
    count = sum(1 for t in times if a < t <= b)
    return count / (b - a) if b > a and count else None


# ---------------------------------------------------------------------------------------------
# more than one process: paddle.distributed.launch


def dist_env() -> Tuple[int, int]:
    """``(rank, world)`` of this process under ``paddle.distributed.launch`` (``(0, 1)`` otherwise)."""
    return int(os.environ.get("PADDLE_TRAINER_ID", "0")), int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def init_dist() -> Tuple[int, int]:
    """Join the process group when launched with several ranks (gloo on CPU); ``(rank, world)``.

    Ranks other than 0 log warnings only, so a run prints one progress bar and one summary.
    """
    rank, world = dist_env()
    if world > 1:
        import paddle.distributed as dist

        if not dist.is_initialized():
            dist.init_parallel_env()
        if rank != 0:
            logging.getLogger("chexcam").setLevel(logging.WARNING)
    return rank, world


def shard(items: Sequence[Any], rank: int, world: int) -> List[Any]:
    """This rank's share: every ``world``-th item from ``rank`` (no padding: ranks may differ by one)."""
    return list(items[rank::world]) if world > 1 else list(items)


def gather(obj: Any, world: int) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` alone."""
    if world <= 1:
        return [obj]
    import paddle.distributed as dist

    out: List[Any] = []
    dist.all_gather_object(out, obj)
    return out


__all__ = ["Stages", "Shelf", "Stored", "fork_is_safe", "native_threads", "workers_for", "steady_rate", "dist_env",
           "init_dist", "shard", "gather"]
