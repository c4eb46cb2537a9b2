"""Where an import writes: ``DST/NAME`` checked (a plain name, apart from SRC, empty unless overwritten), the import
written into a hidden staging folder beside it, and renamed into place only when everything went through, so that a
failed or interrupted import leaves nothing half written and ``--overwrite`` replaces the old data set in one step."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from ...errors import ConfigError, DataError


def check_destination(src: Path, dst: Path, name: str, overwrite: bool) -> Path:
    """``DST/NAME``, after refusing a name that is not one folder, a destination inside SRC (or holding it: an
    overwrite would delete the source), and a non-empty destination without ``overwrite``."""
    if not name or name in (".", "..") or "/" in name or os.sep in name or name.startswith("."):
        raise ConfigError(f"--name {name!r} must be a plain folder name (no '/', not starting with '.')")
    final = dst / name
    s, f = src.resolve(), final.resolve()
    if s == f or s in f.parents or f in s.parents:
        raise ConfigError(
            f"destination {final} and source {src} overlap: the import never writes under SRC; choose another DST"
        )
    if final.exists():
        if not final.is_dir():
            raise DataError(f"{final} exists and is not a folder: remove it, or choose another --name")
        if any(final.iterdir()) and not overwrite:
            raise DataError(f"{final} is not empty: pass --overwrite to replace it, or choose another --name")
    return final


def staging_folder(final: Path) -> Path:
    """A new hidden folder beside ``final`` with the permissions any new folder gets (``mkdtemp``'s 0700 would
    stay on the data set after the rename, unreadable to the other users of a shared data root)."""
    while True:
        staging = final.parent / f".{final.name}.import-{secrets.token_hex(4)}"
        try:
            staging.mkdir()
            return staging
        except FileExistsError:
            continue


def commit(staging: Path, final: Path) -> None:
    """Rename the finished staging folder to ``final``; an old ``final`` is moved aside first and deleted after,
    so that a crash in between leaves either data set whole."""
    old = None
    if final.exists():
        if any(final.iterdir()):
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
        else:
            final.rmdir()
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
