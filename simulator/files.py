"""Files stage: read YAML inputs with one-line errors; write outputs whole, into run directories built aside."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

#: Largest YAML input read (bytes): every moesim input (scenario, preset, profile, cases file,
#: progress header) is a few kB to a few hundred kB; tens of MB would be parsed for minutes.
MAX_YAML_BYTES = 2 * 1024 * 1024
#: Most values a YAML document may hold once its aliases are expanded: a few hundred bytes of
#: nested anchors ("billion laughs") expand to billions, which anything walking the data would visit.
MAX_YAML_VALUES = 200_000


class YamlLimitError(yaml.YAMLError):
    """A document that is too large once expanded, or that refers to itself."""


def expanded_size(root: yaml.Node, limit: int = MAX_YAML_VALUES) -> int:
    """The number of values of a composed document with every alias expanded, without expanding it:
    each node is counted once with its children's sizes (iteratively, no recursion); raises
    YamlLimitError past `limit` or for a node that contains itself."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            active.discard(key)
            children = _children(node)
            size = 1 + sum(sizes[id(c)] for c in children)
            if size > limit:
                raise YamlLimitError(f"the document expands to more than {limit} values (nested aliases?)")
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in active:
            raise YamlLimitError("an alias refers to a value that contains it (a recursive document)")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)
    and a document too large once its aliases are expanded (checked before anything is built)."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        expanded_size(node)
        return self.construct_document(node)

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


def load_yaml_text(text: str) -> Any:
    """Parse YAML text with moesim's loader: duplicate keys refused, aliases bounded (yaml.YAMLError,
    YamlLimitError or RecursionError otherwise)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def read_bounded(path: Path, label: str, kind: str, error: type[Exception], limit: int = MAX_YAML_BYTES) -> bytes:
    """The bytes of `path`, refusing a directory, a missing file and a file over `limit` bytes."""
    try:
        if path.is_dir():
            raise error(f"{label}: is a directory; give a {kind} file")
        size = path.stat().st_size
        if size > limit:
            raise error(f"{label}: {size / 1e6:.1f} MB is too large for a {kind} (at most {limit / 1e6:.1f} MB)")
        with path.open("rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise error(f"{label}: cannot read ({exc.strerror})") from None
    if len(raw) > limit:  # grew meanwhile, or a pipe
        raise error(f"{label}: too large for a {kind} (at most {limit / 1e6:.1f} MB)")
    return raw


def read_yaml(path: Path, label: str, kind: str, error: type[Exception]) -> Any:
    """The parsed document of `path`; any problem raises `error` with one line that starts with
    `label` and says what to do (binary, not UTF-8, syntax with line and column, too deep, too
    large: over MAX_YAML_BYTES, or over MAX_YAML_VALUES once its aliases are expanded)."""
    raw = read_bounded(Path(path), label, kind, error)
    if b"\x00" in raw[:4096]:
        raise error(f"{label}: binary file; give a {kind} YAML file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{label}: not UTF-8 text (bad byte at offset {exc.start}); save the {kind} as UTF-8") from None
    try:
        return load_yaml_text(text)
    except YamlLimitError as exc:
        raise error(f"{label}: {exc}; a {kind} needs no such structure") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{label}: YAML syntax error{where}: {problem}") from None
    except RecursionError:
        raise error(f"{label}: YAML nested too deeply to be a {kind}") from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of more digits than Python converts
        raise error(f"{label}: a value cannot be read ({str(exc)[:80]})") from None


# ---------------------------------------------------------------------------------------------
# Output safety: run directories are built aside and moved into place; files are written whole.

MARKER_FILE = ".moesim-run"


class OutputError(RuntimeError):
    """The output directory cannot be used; the message says why and what to do."""


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file.
    A failure to write (full disk, read-only directory) is an OutputError naming the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write it ({exc.strerror or exc}); choose a writable directory") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(
            f"{path}: cannot write it ({exc.strerror or exc}); free space or choose another directory"
        ) from None
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


def _staging_prefix(out: Path, kind: str) -> str:
    return f".{out.name}.{kind}-"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_staging(out: Path) -> list[Path]:
    """Remove the staging and replaced-run directories an earlier run beside `out` left when it was
    killed (kill -9, power loss): those whose process (named in the directory) is gone, and those
    of moesim versions that did not name it. Returns what was removed."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    removed = []
    for kind in ("staging", "old"):
        for path in parent.glob(_staging_prefix(out, kind) + "*"):
            pid_text = path.name[len(_staging_prefix(out, kind)) :].split("-", 1)[0]
            if pid_text.isdigit() and (int(pid_text) == os.getpid() or pid_alive(int(pid_text))):
                continue  # a run in progress (or this one)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def output_target(out: Path) -> Path:
    """The directory `--out` names: a symlink to a directory is followed (the link stays, the run
    replaces its target); a dangling link, the current directory or one above it is refused."""
    out = Path(out)
    if out.is_symlink():
        target = Path(os.path.realpath(out))
        if not target.is_dir():
            raise OutputError(
                f"--out {out}: a symbolic link to {target}, which is not a directory; choose another path"
            )
        out = target
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path(resolved.anchor):
        raise OutputError(
            f"--out {out}: the current directory (or one above it) cannot be replaced; "
            "name a subdirectory, e.g. --out reports/run"
        )
    return out


def check_output(out: Path, force: bool = False, kind: str | None = None) -> Path:
    """Everything run_directory needs, checked before any work starts: `out` may be replaced
    (not a file; empty, or made by moesim for the same `kind` of output (the command's name), or
    `force`) and its parent is writable (a staging directory is made there and removed). Also
    removes stale staging directories of killed runs. Returns the directory to write (output_target)."""
    out = output_target(out)
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"--out {out}: exists and is not a directory; choose another path")
        if not (out / MARKER_FILE).exists() and any(out.iterdir()) and not force:
            raise OutputError(f"--out {out}: directory exists and was not made by moesim; pass --force to replace it")
        theirs = marker_kind(out)
        if kind and theirs and theirs != kind and not force:
            raise OutputError(
                f"--out {out}: holds the output of `moesim {theirs}`; choose another --out "
                f"or pass --force to replace it"
            )
        if not os.access(out, os.W_OK | os.X_OK):
            raise OutputError(
                f"--out {out}: the directory is read-only, so it cannot be replaced; "
                "choose another path or make it writable"
            )
    parent = out.parent if str(out.parent) else Path(".")
    clean_stale_staging(out) if parent.is_dir() else None
    Path(_make_staging(out, parent, "staging")).rmdir()
    return out


def _make_staging(out: Path, parent: Path, kind: str) -> Path:
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=parent, prefix=f"{_staging_prefix(out, kind)}{os.getpid()}-"))
    except OSError as exc:
        blocker = next((p for p in parent.parents if p.is_file()), parent if parent.is_file() else None)
        why = f"{blocker} is a file, not a directory" if blocker else exc.strerror
        raise OutputError(f"--out {out}: cannot write there ({why}); choose a writable directory") from None


@contextmanager
def run_directory(out: Path, force: bool = False, kind: str | None = None) -> Iterator[Path]:
    """Yield a fresh staging directory; on success it replaces `out` in one rename.

    `out` must not exist, be empty, or be a directory moesim made (it holds MARKER_FILE) for the
    same `kind` of output (the command's name), unless `force` (check_output, which commands also
    call before they start working). Directories inside the old `out` that moesim made for other
    outputs (`moesim dag`'s and `compare`'s under a run's) move into the new one. On any error the
    staging directory is removed and `out` is left as it was; a failure to move the old run aside
    or the new one in is an OutputError naming the path.
    """
    out = check_output(out, force, kind)
    parent = out.parent if str(out.parent) else Path(".")
    staging = _make_staging(out, parent, "staging")
    staging.chmod(0o755)
    try:
        try:
            (staging / MARKER_FILE).write_text(f"made by moesim {kind}\n" if kind else "made by moesim\n")
        except OSError as exc:
            raise OutputError(
                f"--out {out}: cannot write there ({exc.strerror}); choose a writable directory"
            ) from None
        yield staging
        _swap_in(staging, out, parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: Path, out: Path, parent: Path) -> None:
    """Move `staging` to `out`, the old `out` (if any) aside first and removed after; if a rename
    fails, the old run is put back."""
    if not out.exists():
        try:
            os.replace(staging, out)
        except OSError as exc:
            raise OutputError(
                f"--out {out}: cannot move the new run into place ({exc.strerror}); choose another path"
            ) from None
        return
    # The old run is renamed within its parent (onto an empty directory, which rename(2) allows):
    # moving a directory to another parent would need write permission on it.
    old = Path(tempfile.mkdtemp(dir=parent, prefix=f"{_staging_prefix(out, 'old')}{os.getpid()}-"))
    moved = False
    try:
        os.replace(out, old)
        moved = True
        os.replace(staging, out)
    except OSError as exc:
        if moved:
            os.replace(old, out)
        shutil.rmtree(old, ignore_errors=True)
        raise OutputError(
            f"--out {out}: cannot replace it ({exc.strerror}); choose another path or make it writable"
        ) from None
    for inner in sorted(old.iterdir()):  # other commands' outputs kept inside this one (dag/, compare/)
        if inner.is_dir() and (inner / MARKER_FILE).exists() and not (out / inner.name).exists():
            with contextlib.suppress(OSError):
                os.replace(inner, out / inner.name)
    shutil.rmtree(old, ignore_errors=True)
