"""A run directory: what rank 0 writes there (resolved config, metrics log, checkpoints, TensorBoard), every
write atomic or an appended log line."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..argmax import class_argmax
from ..config import DEFAULTS, dump_config
from ..data import SegmentationDataset, image_to_uint8
from ..errors import ConfigError
from ..fileio import TEMP_SUFFIX, atomic_write_text, load_yaml, naming, to_jsonable
from ..metrics import SUMMARY_KEYS
from ..models.weights import save_checkpoint
from ..visualize import colorize, overlay, overlay_palette
from .resume import truncate_log, weights_only

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"
LOCK_ASIDE_SUFFIX = ".claim"  # not TEMP_SUFFIX: remove_stale_temporaries must not take another claimant's
CLAIM_SECONDS = 10.0  # an unreadable lock younger than this may be one being written (no hard links): not stale


_HELD: set[Path] = set()  # the locks this process holds: its own pid in any other lock is a reused one


def process_identity(pid: int) -> list[str | int] | None:
    """``[boot id, start time in clock ticks since boot]`` of process ``pid``, which no other process shares, even
    one given the same pid after a restart (Linux's /proc); None where /proc does not tell. Read from the kernel's
    own counters, not the wall clock, which may be corrected after boot."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        start = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22 of stat
    except (OSError, ValueError, IndexError):
        return None
    return [boot, start]


def _alive(owner: dict[str, Any], path: Path) -> bool:
    """Whether the process that wrote lock ``path`` still runs: its pid exists, is not this process (unless it
    holds the lock), and is the same process (not a pid reused after a restart, where the lock says which)."""
    pid = owner["pid"]
    if pid == os.getpid():
        return path.resolve() in _HELD
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    recorded, now = owner.get("process"), process_identity(pid)
    return not isinstance(recorded, list) or now is None or recorded == now


def _folder_identity(folder: Path) -> list[int]:
    """The folder's device and inode: the same through any path to it (links, bind mounts), another for a copy."""
    st = folder.stat()
    return [st.st_dev, st.st_ino]


class RunLock:
    """``RUN_DIR/.lock`` holding the pid and host of the training that owns the directory. A second training
    into a live run stops with an error naming the owner; a lock left by a dead process on this host is
    taken over. The lock appears with its owner already in it (written aside, then hard-linked into place), so
    no other process ever reads a lock still empty and takes it for a dead one's."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "process": process_identity(os.getpid()),
            "folder": _folder_identity(self.path.parent),
        }
        for _ in range(2):
            try:
                self._create(json.dumps(me))
            except FileExistsError:
                owner = self._owner()
                if owner is None and self._age() < CLAIM_SECONDS:
                    # a file system without hard links: another process has created the lock and not yet written it
                    raise ConfigError(
                        f"{self.path.parent} is being claimed by another training right now ({self.path} was "
                        "created moments ago): wait for it, or choose another --run-dir"
                    ) from None
                # a lock copied with its run directory (cp -a of a live run) guards the original, not this copy
                copied = owner is not None and owner.get("folder") not in (None, me["folder"])
                if owner is None or (owner["host"] == me["host"] and (copied or not _alive(owner, self.path))):
                    log.warning("taking over the stale lock %s %s", self.path, owner or "(unreadable)")
                    self.path.unlink(missing_ok=True)
                    continue
                raise ConfigError(
                    f"{self.path.parent} is in use by the training with pid {owner['pid']} on host "
                    f"{owner['host']} (since {owner.get('started')}): wait for it, stop it, or choose another "
                    f"--run-dir (delete {self.path} only if that process is gone)"
                ) from None
            self.held = True
            _HELD.add(self.path.resolve())
            return
        raise ConfigError(f"cannot take the lock {self.path}: another process keeps creating it")

    def _create(self, text: str) -> None:
        """Create the lock holding ``text``, or raise FileExistsError."""
        aside = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}{LOCK_ASIDE_SUFFIX}")
        try:
            aside.write_text(text)
        except OSError as e:  # a full disk: no claim left behind, and the file named (a one-line error)
            aside.unlink(missing_ok=True)
            raise naming(e, aside) from None
        try:
            os.link(aside, self.path)  # atomic, and fails if the lock exists
            return
        except OSError as e:
            # NFS may report a link that was made as failed (a retransmitted request): two names, it is ours
            # (the open(2) manual's recipe)
            with contextlib.suppress(OSError):
                if aside.stat().st_nlink == 2:
                    return
            if isinstance(e, FileExistsError):
                raise
            # no hard links here (some network and FAT file systems): create, then write
        finally:
            aside.unlink(missing_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _owner(self) -> dict[str, Any] | None:
        """The lock's owner, or None when it is unreadable or names no process."""
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(owner, dict) or type(owner.get("pid")) is not int or not isinstance(owner.get("host"), str):
            return None
        return owner

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return math.inf

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
            _HELD.discard(self.path.resolve())


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Temporary files of writes that a kill interrupted (``.NAME.XXXX.tmp``, see
    :func:`pixelwise.fileio.atomic_write`): with the lock held, nothing else can be writing them."""
    stale = sorted(run_dir.glob(f".*{TEMP_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted write", path)
    return stale


def _set_aside(*paths: Path) -> list[Path]:
    """Rename each of ``paths`` to ``NAME.old-N.SUFFIX``, with the first ``N`` free for all of them (an old log is
    kept, never appended to, and the same run's other files with its number). Returns the new paths."""
    n = 1
    while any(_old_name(p, n).exists() for p in paths):
        n += 1
    for p in paths:
        p.rename(_old_name(p, n))
    return [_old_name(p, n) for p in paths]


def _old_name(path: Path, n: int) -> Path:
    return path.with_name(f"{path.stem}.old-{n}{path.suffix}")


class RunFiles:
    """``config.yaml``, ``metrics.jsonl``, ``last.pt``, ``best.pt``, ``iter_NNNNNNN.pt`` (``keep_last`` > 1)
    and ``tensorboard/``; nothing is written unless ``enabled`` (rank 0)."""

    def __init__(self, run_dir: Path, keep_last: int, enabled: bool) -> None:
        self.dir, self.keep_last, self.enabled = run_dir, keep_last, enabled
        self._resumed = False
        self.last, self.best, self.log_path = run_dir / "last.pt", run_dir / "best.pt", run_dir / "metrics.jsonl"
        self._log = None
        self.tensorboard = None
        self.lock = RunLock(run_dir)
        self._created = False

    def claim(self) -> None:
        """Take the directory's lock and clean up after an interrupted run (rank 0 only)."""
        if self.enabled:
            self._created = not self.dir.exists()  # made for this run: removed again if it fails before writing
            self.lock.acquire()
            remove_stale_temporaries(self.dir)

    def open(self, config: dict[str, Any], resume_iter: int | None, tensorboard: bool = False) -> None:
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._resumed = resume_iter is not None  # the folder's iter_*.pt up to here are this run's own
        if resume_iter is not None:  # first: a log this refuses must not leave the new settings behind
            truncate_log(self.log_path, resume_iter)
            config = _keep_searched_crf(self.dir / "config.yaml", config)
        text, config_path = dump_config(config), self.dir / "config.yaml"
        if resume_iter is None and config_path.is_file() and config_path.read_bytes() != text.encode():
            # a new run in a folder holding a config.yaml (often the user's own: train exp/config.yaml --run-dir exp)
            log.warning("%s is not this run's: kept as %s", config_path, _set_aside(config_path)[0].name)
        atomic_write_text(config_path, text)
        # an earlier run without a checkpoint (killed before its first): its log and TensorBoard events are kept
        # under one number, apart from this run's, which TensorBoard would read as one history with each step twice
        earlier = [p for p in (self.log_path, self.dir / "tensorboard") if p.exists()] if resume_iter is None else []
        if earlier:
            kept = _set_aside(*earlier)
            log.warning(
                "%s %s from an earlier run without a checkpoint: kept as %s",
                " and ".join(map(str, earlier)),
                "are" if len(earlier) > 1 else "is",
                " and ".join(p.name for p in kept),
            )
        self._log = open(self.log_path, "a")  # noqa: SIM115 (closed in close())
        if tensorboard:  # a resumed run's points past its checkpoint (written before a kill) are dropped
            self.tensorboard = _summary_writer(self.dir, None if resume_iter is None else resume_iter + 1)

    def record(self, entry: dict[str, Any]) -> None:
        if self._log is not None:
            try:
                self._log.write(json.dumps(to_jsonable(entry)) + "\n")
                self._log.flush()
            except OSError as e:  # a full disk: name the log (a one-line error), as a checkpoint's write does
                raise naming(e, self._log.name) from None

    def save(self, checkpoint: dict[str, Any], it: int, best: bool) -> None:
        if not self.enabled:
            return
        if best:  # first: a kill between the two must not leave last.pt naming a best.pt that was never written
            save_checkpoint(self.best, weights_only(checkpoint))
        save_checkpoint(self.last, checkpoint)
        if self.keep_last > 1:  # also keep the last k checkpoints by iteration
            save_checkpoint(self.dir / f"iter_{it:07d}.pt", checkpoint)
        elif not self._resumed:  # keep_last 1 keeps no iter_*.pt: none of a new run's, in a folder maybe not only its
            return
        # by number (iter_10000000 sorts before iter_9999999 by name), and only this run's past: files of a later
        # iteration are an earlier run's, not this one's to rotate away; keep_last 1, lowered on a resume, keeps none
        kept = sorted((n, p) for p in self.dir.glob("iter_*.pt") if (n := _iteration(p)) is not None and n <= it)
        for _, old in kept[: -self.keep_last] if self.keep_last > 1 else kept:
            old.unlink()

    def scalars(self, values: dict[str, float], it: int) -> None:
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, it)

    def close(self) -> None:
        try:
            if self._log is not None:
                log_file, self._log = self._log, None
                try:
                    log_file.close()
                except OSError as e:  # what is still buffered (a full disk): the error that stopped the run says so
                    log.warning("%s: the last lines could not be written (%s)", log_file.name, e.strerror or e)
            if self.tensorboard is not None:
                self.tensorboard.close()
                self.tensorboard = None
        finally:
            self.lock.release()
        if self._created:
            with contextlib.suppress(OSError):  # not empty (the run wrote something): kept
                self.dir.rmdir()


def _summary_writer(run_dir: Path, purge_step: int | None = None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("train.tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)


def _iteration(path: Path) -> int | None:
    """The iteration of an ``iter_NNNNNNN.pt`` file (None for another name)."""
    digits = path.stem.removeprefix("iter_")
    return int(digits) if digits.isdigit() else None


def _keep_searched_crf(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the ``crf`` section of the run's existing ``config.yaml`` (where ``crf-search`` writes its
    result) when ``config`` leaves the CRF at its defaults: a resume must not put the defaults back over a search.
    The CRF does not take part in training."""
    if config.get("crf") != DEFAULTS["crf"]:
        return config  # set by the user for this resume: theirs
    try:
        existing = load_yaml(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return config
    crf = existing.get("crf") if isinstance(existing, dict) else None
    return {**config, "crf": crf} if isinstance(crf, dict) else config


def tensorboard_val(
    writer,
    model: nn.Module,
    val_ds: SegmentationDataset,
    metrics: dict[str, Any],
    meta: dict[str, Any],
    device: torch.device,
    it: int,
    images: int = 2,
) -> None:
    """Val scalars and, for the first ``images`` val images, prediction overlays."""
    for key in SUMMARY_KEYS:
        writer.add_scalar(f"val/{key}", metrics[key], it)
    for name, value in zip(val_ds.info.classes, metrics["iou"], strict=True):
        if value is not None and math.isfinite(value):
            writer.add_scalar(f"val_iou/{name}", value, it)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i in range(min(images, len(val_ds))):
            x, _ = val_ds[i]
            pred = class_argmax(model(x[None].to(device)))[0].to(torch.uint8).cpu().numpy()
            raw, _ = val_ds.load(i)
            picture = overlay(image_to_uint8(raw), colorize(pred, overlay_palette(meta["palette"])))
            writer.add_image(f"val_overlay/{val_ds.name_of(i)}", picture, it, dataformats="HWC")
    model.train(was_training)
