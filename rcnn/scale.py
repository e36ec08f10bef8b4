"""Running the per-image stages past one process: shards that any scheduler can drive, and Ray tasks.

Sharding: ``--shard K/N`` keeps the images whose index, with the images sorted by path, is
K modulo N (:func:`shard_of`). Each shard writes the same per-image files an unsharded run
writes, so N shards into one folder (a shared file system) equal one run; a final run without
``--shard`` writes the reports from what is there and computes only what is missing. Nothing
is read from ``RANK`` / ``SLURM_*``: a scheduler passes them (``--shard $SLURM_ARRAY_TASK_ID/N``).

Execution: :func:`run_tasks` calls ``fn(shared, item)`` for every item, in this process, in a
pool of spawned processes, or as Ray tasks (:func:`ray_tasks`), and hands each result to
``on_result`` in the calling process as it completes. ``shared`` (settings, a model) is sent
once: to each pool process, or into Ray's object store (``ray.put``). A per-image problem is
``fn``'s to catch and return (so it is reported, never retried); Ray retries a task whose
worker died (``max_retries``), and one that still fails is reported as that item's error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any, TypeVar

from .errors import MissingDependencyError, RcnnError

T = TypeVar("T")
Shard = tuple[int, int]  # (k, n): this shard's index and the number of shards, 0 <= k < n

RAY_INSTALL = "--ray needs Ray, which is not installed: pip install 'rcnn[ray]'"
LOCAL = "local"  # --ray with no address: start a local Ray cluster
MAX_RETRIES = 3  # Ray re-runs a task whose worker process or node died this many times
START_ATTEMPTS = 3  # tries to start a local Ray cluster
IN_FLIGHT_PER_CPU = 4  # Ray tasks submitted ahead per cluster CPU (bounds the driver's memory on huge inputs)


# --------------------------------------------------------------------------- shards


def parse_shard(text: str | None) -> Shard | None:
    """``"K/N"`` -> ``(K, N)``; None -> None.

    Raises:
        ValueError: not two integers with 0 <= K < N.
    """
    if text is None:
        return None
    k, sep, n = str(text).strip().partition("/")
    try:
        shard = (int(k), int(n))
    except ValueError:
        shard = None
    if not sep or shard is None or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"'--shard {text}' is invalid; give K/N with integers 0 <= K < N (e.g. 0/4 ... 3/4)")
    return shard


def shard_of(items: Sequence[T], shard: Shard | None, key: Callable[[T], Any] = str) -> list[T]:
    """The items of shard ``(k, n)``: those whose index in ``sorted(items, key=key)`` is ``k`` mod ``n``.

    The order of ``items`` is kept; ``shard=None`` keeps every item. The index is stable: it depends on
    the set of items and their keys, not on the order they are listed in.
    """
    if shard is None:
        return list(items)
    k, n = shard
    order = sorted(range(len(items)), key=lambda i: (key(items[i]), i))
    mine = {i for rank, i in enumerate(order) if rank % n == k}
    return [x for i, x in enumerate(items) if i in mine]


def shard_name(shard: Shard) -> str:
    """``(0, 4)`` -> ``"shard-0-of-4"``: how a shard's own files are named."""
    return f"shard-{shard[0]}-of-{shard[1]}"


# --------------------------------------------------------------------------- running tasks


def init_worker() -> None:
    """Pool processes die with their parent, even when it is killed (SIGKILL, a scheduler's timeout)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _one_thread()


def _one_thread() -> None:
    """One core per image: parallelism comes from processing images in parallel."""
    import cv2

    cv2.setNumThreads(1)


def run_tasks(fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[T], on_result: Callable[[T, Any], Any],
              workers: int = 1, ray: str | None = None, on_error: Callable[[T, str], Any] | None = None,
              bar: Any = None) -> None:
    """Call ``fn(shared, item)`` for each item and ``on_result(item, result)`` here, in completion order.

    Args:
        fn: a module-level function (it is pickled by name); it returns per-item problems rather than raising them.
        shared: the same for every call (settings, a model): sent once per process, or put in Ray's object store once.
        workers: processes when ``ray`` is None (1: in this process; spawned otherwise: a forked child
            inherits OpenCV's thread pool mid-state and can deadlock).
        ray: a Ray address (``auto``, ``ray://host:10001``, ``host:6379``) or ``local``; None: no Ray.
        on_error: Ray only: called with an item and a message when its task failed for good (its worker
            died more than :data:`MAX_RETRIES` times); without it, that error is raised.
        bar: a tqdm bar to advance by one per completed item.
    """
    if ray is not None:
        ray_tasks(fn, shared, items, on_result, ray, on_error, bar)
        return

    def done(item: T, result: Any) -> None:
        on_result(item, result)
        if bar is not None:
            bar.update()

    if workers <= 1 or len(items) <= 1:
        for item in items:
            done(item, fn(shared, item))
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=init_worker) as pool:
        futures = {pool.submit(fn, shared, item): item for item in items}
        try:
            for fut in as_completed(futures):
                done(futures[fut], fut.result())
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def import_ray() -> Any:
    """The ``ray`` module, or MissingDependencyError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(RAY_INSTALL) from None
    return ray


RAY_TIMEOUT = 30.0  # seconds to reach a Ray cluster (resolve, connect, ray.init): it retries a dead address for minutes


class _NoAnswer(Exception):
    """A call run by :func:`_within` did not return in time."""


def _within(fn: Callable[[], T], seconds: float) -> T:
    """``fn()`` in a daemon thread: its result or its exception, or :class:`_NoAnswer` after ``seconds`` (the
    thread is then left behind: nothing can stop ``ray.init`` or a resolver, and a daemon thread does not hold up exit)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name="rcnn-ray-connect", daemon=True)
    thread.start()
    thread.join(max(seconds, 0.0))
    if thread.is_alive():
        raise _NoAnswer()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _ray_endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a Ray address (``HOST:PORT``, ``ray://HOST:PORT``; ``auto``: ``$RAY_ADDRESS``); None: nothing to check."""
    text = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    host, sep, port = text.split("://", 1)[-1].strip().rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _check_reachable(address: str, timeout: float) -> None:
    """Resolve the host of ``address`` and open a TCP connection to its port, within ``timeout`` seconds in all.

    Raises:
        RcnnError: one line naming the address: the host does not resolve, or nothing answers on the port.
    """
    endpoint = _ray_endpoint(address)
    if endpoint is None:
        return
    host, port = endpoint
    deadline = time.monotonic() + timeout
    where = f"cannot connect to the Ray cluster at {address}"
    try:
        _within(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
    except _NoAnswer:
        raise RcnnError(f"{where}: the name {host} did not resolve within {timeout:g} s") from None
    except (OSError, UnicodeError) as e:  # socket.gaierror; a host name too long for IDNA
        raise RcnnError(f"{where}: the name {host} does not resolve ({getattr(e, 'strerror', None) or e})") from None
    try:
        socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.1)).close()
    except TimeoutError:
        raise RcnnError(f"{where}: no answer on port {port} within {timeout:g} s") from None
    except OSError as e:
        raise RcnnError(f"{where}: {e.strerror or e}") from None


@contextmanager
def ray_cluster(address: str = LOCAL, num_cpus: int | None = None, timeout: float = RAY_TIMEOUT) -> Iterator[Any]:
    """Connect to the Ray cluster at ``address`` (``local``: start one here); yields the ``ray`` module.

    A Ray session already open in this process (``ray.init`` by the caller, or an enclosing
    ``ray_cluster``) is used as it is and left open; one started here is shut down on exit.

    Args:
        num_cpus: ``local`` only: the CPUs (so, parallel tasks) of the cluster started here; None: every core.
        timeout: seconds to reach a cluster at ``address`` (its host resolved, its port answering, ``ray.init``
            returned); ``local`` keeps Ray's own limits.

    Raises:
        RcnnError: one line naming the address: it does not resolve, does not answer within ``timeout``, or
            ``ray.init`` fails; or a local cluster cannot be started.
        ValueError: ``timeout`` is not a positive number of seconds.
    """
    if not timeout > 0:
        raise ValueError(f"'ray_timeout={timeout}' is invalid; give a positive number of seconds")
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    local = address == LOCAL
    deadline = time.monotonic() + timeout
    if not local:
        _check_reachable(address, timeout)

    def init() -> Any:
        return ray.init(address=None if local else address, include_dashboard=False, log_to_driver=False,
                        configure_logging=False, **({"num_cpus": num_cpus} if local and num_cpus else {}))

    for attempt in range(START_ATTEMPTS if local else 1):  # Ray gives its processes 30 s: a busy machine can miss it
        try:
            if local:
                init()
            else:
                _within(init, deadline - time.monotonic())
            break
        except _NoAnswer:  # not shut down: that would wait on the connection that never answers
            raise RcnnError(f"cannot connect to the Ray cluster at {address}: no answer within {timeout:g} s") from None
        except Exception as e:  # Ray raises plain Exception, ConnectionError, ValueError, ...
            ray.shutdown()
            if attempt == (START_ATTEMPTS if local else 1) - 1:
                where = "start a local Ray cluster" if local else f"connect to the Ray cluster at {address}"
                raise RcnnError(f"cannot {where}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


_SHARED: dict[str, Any] = {}  # in a task's child process: the stage's shared object, by its ref
_CHILD: dict[str, ProcessPoolExecutor] = {}  # in a Ray worker: the child process that runs the tasks of one ref


def _child_init(key: str, shared: Any) -> None:
    init_worker()
    _SHARED[key] = shared


def _child_call(fn: Callable[[Any, Any], Any], key: str, item: Any) -> Any:
    return fn(_SHARED[key], item)


def _ray_call(fn: Callable[[Any, Any], Any], shared_ref: list[Any], item: Any) -> Any:
    """What a Ray task runs: ``fn(shared, item)`` in a child process of the Ray worker, one per worker and stage.

    Not in the worker itself: Ray's own threads call libc ``rand()``, which OpenCV's selective search ranks
    regions with, so the same image would give boxes in another order than anywhere else. The child gets
    ``shared`` once (the ref comes wrapped in a list so that Ray does not fetch a model once per task).
    A child that dies (a crash in native code) takes the worker with it, so that Ray retries the task.
    """
    import ray

    key = shared_ref[0].hex()
    if key not in _CHILD:
        for old in _CHILD.values():  # one stage at a time: do not keep an earlier stage's model alive
            old.shutdown(cancel_futures=True)
        _CHILD.clear()
        _CHILD[key] = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_child_init,
                                          initargs=(key, ray.get(shared_ref[0])))
    try:
        return _CHILD[key].submit(_child_call, fn, key, item).result()
    except BrokenProcessPool:
        os._exit(1)  # a system failure: Ray sees the worker die and retries the task (max_retries)


def ray_tasks(fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[T], on_result: Callable[[T, Any], Any],
              address: str = LOCAL, on_error: Callable[[T, str], Any] | None = None, bar: Any = None,
              max_retries: int = MAX_RETRIES) -> None:
    """:func:`run_tasks` on a Ray cluster: one task per item (1 CPU each), results in completion order (``ray.wait``);
    a task whose worker died is re-run up to ``max_retries`` times."""
    if not items:
        return
    with ray_cluster(address) as ray:
        from ray.exceptions import RayTaskError

        task = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=False)(_ray_call)
        shared_ref = ray.put(shared)  # once: every task gets the reference, not a copy
        limit = max(1, IN_FLIGHT_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
        pending: dict[Any, T] = {}
        queue = iter(items)
        try:
            while True:
                for item in queue:
                    pending[task.remote(fn, [shared_ref], item)] = item
                    if len(pending) >= limit:
                        break
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    item = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except RayTaskError as e:  # fn raised: a bug, not a bad image; raise it as it is
                        cause = getattr(e, "cause", None)
                        raise (cause if isinstance(cause, BaseException) else e) from None
                    except ray.exceptions.RayError as e:  # the worker died, again and again
                        if on_error is None:
                            raise
                        on_error(item, f"its Ray task failed {max_retries + 1} times ({type(e).__name__}: "
                                       f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})")
                    else:
                        on_result(item, result)
                    if bar is not None:
                        bar.update()
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
