"""`InChild`: a function computed in a forked second process while the caller goes on (`moesim run` and
`simulator.api.run` use it to measure the sampling error and draw pictures on a second core)."""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import signal
import threading


class InChild:
    """`fn(*args)` computed in a forked child process while this one goes on; `result()` waits for
    it (the value comes back pickled through a pipe). Where a fork is not available or not safe
    (not POSIX, or other threads running), or the child fails, `result()` calls `fn` here instead:
    the same value, only later. `cancel()` stops the child if its result is not wanted."""

    def __init__(self, fn, *args) -> None:
        self._fn, self._args = fn, args
        self._pid: int | None = None
        if not hasattr(os, "fork") or threading.active_count() > 1:
            return
        read, write = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read)
            os.close(write)
            return
        if pid == 0:  # the child: compute, send, leave without running the parent's exit handlers
            code = 1
            try:
                gc.freeze()  # the parent's objects stay out of the collector's way (and shared)
                os.close(read)
                data = pickle.dumps(fn(*args))
                with os.fdopen(write, "wb") as pipe:
                    pipe.write(data)
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        self._pid, self._read = pid, read

    def result(self):
        pid, self._pid = self._pid, None
        if pid is not None:
            with os.fdopen(self._read, "rb") as pipe:
                data = pipe.read()
            _, status = os.waitpid(pid, 0)
            if status == 0 and data:
                return pickle.loads(data)
        return self._fn(*self._args)

    def cancel(self) -> None:
        pid, self._pid = self._pid, None
        if pid is not None:
            os.close(self._read)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
