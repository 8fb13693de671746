"""Sweep stage, executors: where the layouts are simulated (this process, local processes or Dask), as
`concurrent.futures.Executor`s."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager

from simulator.config import ScenarioError


class SerialExecutor(Executor):
    """Runs each task when it is submitted, in this process (--jobs 1)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def default_jobs() -> int:
    """The cores this process may use (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: The most local worker processes --jobs may ask for: more than a host has cores only queue for them, and the
#: process pool's semaphore takes a C int.
MAX_JOBS = 1024


def check_jobs(jobs: int | None) -> None:
    """Raise ScenarioError (one line) unless --jobs is None (every core) or 1 to MAX_JOBS."""
    if jobs is not None and not 1 <= jobs <= MAX_JOBS:
        raise ScenarioError(f"--jobs {jobs}: expected 1 to {MAX_JOBS} worker processes (default: every core)")


@contextmanager
def make_executor(spec: str | None = None, jobs: int | None = None) -> Iterator[Executor]:
    """An executor for `--executor`: None/'process' (local processes, `jobs` of them, default all
    cores; serial when jobs == 1), 'serial', 'dask-local' (a local Dask cluster) or
    'dask://HOST:PORT' (a running Dask scheduler)."""
    check_jobs(jobs)
    jobs = jobs or default_jobs()
    spec = spec or "process"
    if spec == "serial" or (spec == "process" and jobs == 1):
        yield SerialExecutor()
    elif spec == "process":
        pool = ProcessPoolExecutor(max_workers=jobs)
        try:
            yield pool
        except KeyboardInterrupt:
            # Tasks already handed to a worker cannot be cancelled and would run to the end (a
            # minute, for a large layout) before shutdown returned: stop the workers instead.
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    elif spec == "dask-local" or spec.startswith("dask://"):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ScenarioError(f"--executor {spec}: Dask is not installed; pip install 'moesim[dask]'") from None
        if spec == "dask-local":
            cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
        else:
            cluster = None
            try:
                client = Client("tcp://" + spec[len("dask://") :], timeout=10)
            except OSError as exc:
                raise ScenarioError(f"--executor {spec}: cannot reach the Dask scheduler ({exc})") from None
        try:
            yield client.get_executor(pure=False)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    else:
        raise ScenarioError(f"--executor {spec}: expected process, serial, dask-local or dask://HOST:PORT")
