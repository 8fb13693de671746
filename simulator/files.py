"""Files stage: read YAML inputs with one-line errors; write outputs whole, into run directories built aside."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: the base constructor reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, label: str, kind: str, error: type[Exception]) -> Any:
    """The parsed document of `path`; any problem raises `error` with one line that starts with
    `label` and says what to do (binary, not UTF-8, syntax with line and column, too deep)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{label}: cannot read ({exc.strerror})") from None
    if b"\x00" in raw[:4096]:
        raise error(f"{label}: binary file; give a {kind} YAML file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{label}: not UTF-8 text (bad byte at offset {exc.start}); save the {kind} as UTF-8") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{label}: YAML syntax error{where}: {problem}") from None
    except RecursionError:
        raise error(f"{label}: YAML nested too deeply to be a {kind}") from None


# ---------------------------------------------------------------------------------------------
# Output safety: run directories are built aside and moved into place; files are written whole.

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


def marker_kind(directory: Path) -> str | None:
    """The command that made `directory` ('run', 'dag', 'compare'), as its MARKER_FILE says; None
    when it has no marker or one from before markers named their command."""
    try:
        words = (Path(directory) / MARKER_FILE).read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    return words[3] if len(words) > 3 and words[:3] == ["made", "by", "moesim"] else None


@contextmanager
def run_directory(out: Path, force: bool = False, kind: str | None = None) -> Iterator[Path]:
    """Yield a fresh staging directory; on success it replaces `out` in one rename.

    `out` must not exist, be empty, or be a directory moesim made (it holds MARKER_FILE) for the
    same `kind` of output (the command's name), unless `force`. Directories inside `out` that
    moesim made for other outputs (`moesim dag`'s and `compare`'s under a run's) move into the
    new `out`. On any error the staging directory is removed and `out` is left as it was.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"--out {out}: exists and is not a directory; choose another path")
        if not (out / MARKER_FILE).exists() and any(out.iterdir()) and not force:
            raise OutputError(f"--out {out}: directory exists and was not made by moesim; pass --force to replace it")
        theirs = marker_kind(out)
        if kind and theirs and theirs != kind and not force:
            raise OutputError(f"--out {out}: holds the output of `moesim {theirs}`; choose another --out "
                              f"or pass --force to replace it")
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
        (staging / MARKER_FILE).write_text(f"made by moesim {kind}\n" if kind else "made by moesim\n")
        yield staging
        if out.exists():
            for inner in sorted(out.iterdir()):
                if inner.is_dir() and (inner / MARKER_FILE).exists() and not (staging / inner.name).exists():
                    os.replace(inner, staging / inner.name)
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "run")
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
