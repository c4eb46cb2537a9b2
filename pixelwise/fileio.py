"""Writing files so that nothing already written is lost: atomic replacement, strict JSON; reading the
JSON-lines logs a kill may have cut short."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

from .errors import ConfigError, DataError, first_line

TEMP_SUFFIX = ".tmp"
log = logging.getLogger(__name__)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, durable: bool = True) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, fsync it, then rename it over
    ``path`` (and fsync the folder): a reader (or a crash) sees the old file or the new one, never half of one.
    ``durable=False`` leaves out the fsyncs: a killed process still leaves the old file or the new one, a power
    cut may not (for many small outputs, where an fsync each would cost more than writing them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            # mode 0o666 under the process's umask: the permissions any new file gets (mkstemp's 0600 would need a
            # chmod, and reading the umask means setting it, for every thread at once)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
        except OSError as e:  # a folder it cannot write in: the error names the file asked for, not ours
            raise naming(e, path, tmp) from None
    try:
        with os.fdopen(fd, "w+b") as f:  # readable too: Pillow reads back a multi-page TIFF as it writes it
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise naming(e, path, tmp) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)


def naming(error: OSError, path: str | os.PathLike, temporary: str | os.PathLike | None = None) -> OSError:
    """``error`` with ``path`` as its file where it names none, or names ``temporary`` (the file written in its
    place, gone by the time the user reads of it), and has an errno (a full disk, a file size limit: writes fail
    without a file name), so that the CLI reports it in one line naming the file; else ``error``."""
    named = error.filename is None or (temporary is not None and os.fspath(error.filename) == os.fspath(temporary))
    if named and error.errno is not None:
        return OSError(error.errno, error.strerror or str(error), str(path))
    return error


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut (best effort: not every file system opens folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


class _YAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-4`` is a number, as in every other YAML and JSON reader
    (YAML 1.1, which PyYAML follows, wants a dot: ``1.0e-4``; without one it is a string); and, as YAML 1.2 asks,
    a key given twice in one mapping is an error (PyYAML keeps the last silently: a second ``train:`` section
    undid the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: merged keys may be set again after it
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} given twice (first at line {seen[key].line + 1}): keep one",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error as one line: what is wrong and where (PyYAML's message spans several, with a snippet)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or first_line(error)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    hint = " (indent with spaces: YAML takes no tabs)" if "'\\t'" in problem else ""
    return f"{where}{problem}{hint}"


class _YAMLDumper(yaml.SafeDumper):
    """PyYAML's safe dumper quoting what :func:`load_yaml` would read back as a number (the string ``"1e5"``)."""


_YAML12_FLOAT = (
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
_YAMLLoader.add_implicit_resolver(*_YAML12_FLOAT)
_YAMLDumper.add_implicit_resolver(*_YAML12_FLOAT)

# YAML 1.2's integers (decimal, 1_000 too; 0o octal, 0x hex) instead of 1.1's, which PyYAML follows: there
# `iters: 010` was 8 (octal), `crop_size: [0256, 0256]` [174, 174], `max_minutes: 1:30` 90 (base 60) and `0b11` 3,
# without a word; now 010 is 10, and 1:30 a string that the config's type check refuses
_YAMLLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in _YAMLLoader.yaml_implicit_resolvers.items()
}
_YAML12_INT = (
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_YAMLLoader.add_implicit_resolver(*_YAML12_INT)
_YAMLDumper.add_implicit_resolver(*_YAML12_INT)  # so that the strings "08" and "0o17" are quoted, and load back


def _yaml12_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node).replace("_", "")  # 1_000_000, as Python writes it
    base = {"0o": 8, "0x": 16}.get(text[:2], 10)
    return int(text[2:] if base != 10 else text, base)


_YAMLLoader.add_constructor("tag:yaml.org,2002:int", _yaml12_int)


def load_yaml(text: str) -> Any:
    """Parse YAML as the configs are read everywhere (``yaml.safe_load`` with YAML 1.2's floats)."""
    return yaml.load(text, Loader=_YAMLLoader)  # noqa: S506 - a SafeLoader subclass


def dump_yaml(obj: Any) -> str:
    """YAML text that :func:`load_yaml` reads back as ``obj`` (keys in their order)."""
    return yaml.dump(obj, Dumper=_YAMLDumper, sort_keys=False)


def to_jsonable(obj: Any) -> Any:
    """NaN/inf -> None, recursively, so that the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented strict JSON, written atomically."""
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2))


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines log. A last line cut short (a run killed mid-write) is left out with a
    warning; a damaged line elsewhere is a :class:`DataError` naming it."""
    lines = [(i, line) for i, line in enumerate(Path(path).read_bytes().splitlines(), 1) if line.strip()]
    records = []
    for i, line in lines:
        try:
            record = json.loads(line.decode("utf-8"))  # per line: a stray byte damages its line, not the file
        except (json.JSONDecodeError, UnicodeDecodeError):
            if i == lines[-1][0]:
                log.warning("%s: line %d is cut short (a killed run); left out", path, i)
                continue
            record = None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {i} is not a JSON record; remove it or restore the file")
        records.append(record)
    return records


def file_sha256(path: str | os.PathLike) -> str:
    """The file's SHA-256, hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output_file(
    path: str | os.PathLike | None,
    flag: str,
    overwrite: bool,
    suffixes: tuple[str, ...] = (),
    folder_hint: str = "give a file name",
) -> None:
    """Before any work: the file ``path`` (given as ``flag``) can be written there, is not a folder (``folder_hint``
    says what to give instead), ends in one of ``suffixes`` (any, where empty), and replaces an existing file only
    with ``--overwrite``. ConfigError otherwise."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {p} is a folder: {folder_hint}")
    blocking = next((q for q in p.parents if q.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ConfigError(f"{flag} {p}: {blocking} is a file, not a folder; choose another place")
    # found after the work, the work was lost
    if blocking is not None and (error := cannot_create_in(blocking, p.name)) is not None:
        raise ConfigError(
            f"{flag} {p}: cannot write in {blocking} ({error}); choose another place, or make it writable"
        )
    if suffixes and p.suffix.lower() not in suffixes:
        raise ConfigError(f"{flag} {p}: give a file ending in {', '.join(suffixes)}")
    if p.exists() and not overwrite:
        raise ConfigError(f"{flag} {p} exists: pass --overwrite to replace it, or choose another file")


def cannot_create_in(folder: Path, name: str) -> str | None:
    """Why no file can be created in ``folder`` (the reason, e.g. ``Permission denied``), or None where one can:
    found by creating (and removing) a temporary file there, as :func:`atomic_write` will. Not ``os.access``: it
    says yes to root whatever the folder's mode bits, and to folders that refuse the file itself (sysfs, NFS with
    root squashing)."""
    while True:
        probe = folder / f".{name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            continue
        except OSError as e:
            return e.strerror or str(e)
        probe.unlink(missing_ok=True)
        return None
