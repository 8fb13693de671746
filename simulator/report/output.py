"""Output safety: run directories are built aside and moved into place; files are written whole."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

MARKER_FILE = ".moesim-run"


class OutputError(RuntimeError):
    """The output directory cannot be used; the message says why and what to do."""


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def run_directory(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh staging directory; on success it replaces `out` in one rename.

    `out` must not exist, or be a directory moesim made (it holds MARKER_FILE), unless `force`.
    On any error the staging directory is removed and `out` is left as it was.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"--out {out}: exists and is not a directory; choose another path")
        if not (out / MARKER_FILE).exists() and any(out.iterdir()) and not force:
            raise OutputError(f"--out {out}: directory exists and was not made by moesim; pass --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.staging-"))
        staging.chmod(0o755)
    except OSError as exc:
        blocker = next((p for p in parent.parents if p.is_file()), parent if parent.is_file() else None)
        why = f"{blocker} is a file, not a directory" if blocker else exc.strerror
        raise OutputError(f"--out {out}: cannot write there ({why}); choose a writable directory") from None
    try:
        (staging / MARKER_FILE).write_text("made by moesim\n")
        yield staging
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "run")
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
