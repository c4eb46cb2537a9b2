"""``pixelwise report RUN_DIR``: pictures and a Markdown summary of a training run."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, DataError
from .fileio import atomic_write_text, dump_yaml, load_yaml, read_jsonl, yaml_problem
from .visualize import _pyplot, _save, plot_confusion_matrix, plot_per_class


def read_log(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{run_dir} is not a run directory: {path} does not exist")
    records = read_jsonl(path)
    train, val = [r for r in records if r.get("type") == "train"], [r for r in records if r.get("type") == "val"]
    if not train and not val:
        raise DataError(
            f"{path} holds no training or validation record (the run stopped before it logged any): nothing to report"
        )
    return train, val


def check_log(path: Path, train: list[dict[str, Any]], val: list[dict[str, Any]], classes: int | None) -> None:
    """Records a report can draw: an integer ``iter`` in each, an ``iou`` per class (and a ``classes`` x
    ``classes`` confusion matrix where logged) in each validation record; ``classes``: the run's, where known."""
    for kind, records in (("training", train), ("validation", val)):
        for k, r in enumerate(records, 1):
            it = r.get("iter")
            where = f"{path}: {kind} record {k}" + (f" (iteration {it})" if isinstance(it, int) else "")
            problem = None
            if not isinstance(it, int) or isinstance(it, bool):
                problem = "has no integer 'iter'"
            elif kind == "validation":
                iou, cm = r.get("iou"), r.get("confusion_matrix")
                n = classes if classes is not None else (len(iou) if isinstance(iou, list) else 0)
                if not isinstance(iou, list) or len(iou) != n:
                    problem = f"has no 'iou' list of {n} classes"
                elif cm is not None and not (
                    isinstance(cm, list) and len(cm) == n and all(isinstance(row, list) and len(row) == n for row in cm)
                ):
                    problem = f"has a 'confusion_matrix' that is not {n} x {n}"
            if problem:
                raise DataError(f"{where} {problem}: the log was edited or is another run's; restore metrics.jsonl")


def markdown_cell(text: str) -> str:
    """``text`` as one cell of a Markdown table: ``|`` would split the cell, ``<`` and ``&`` start HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"  # a percentage


REPORT_FILES = ("loss.png", "val.png", "per_class_iou.png", "confusion.png", "summary.md")
_TITLE = "# Run report: "


def write_report(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, overwrite: bool = False
) -> Path:
    """Write ``loss.png``, ``val.png``, ``per_class_iou.png``, ``confusion.png`` and ``summary.md``
    (into ``RUN_DIR/report`` by default; the pictures of what the log holds); returns the summary's path. An
    earlier report in ``out_dir`` is replaced, its pictures that this one does not draw removed; files of these
    names that are not a report's only with ``overwrite``. Other files in ``out_dir`` are left alone."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "report"
    # first: no report folder made for what is no run
    train, val = read_log(run_dir)
    config = _read_config(run_dir / "config.yaml")
    classes = _class_names(run_dir, config, val)
    check_log(run_dir / "metrics.jsonl", train, val, len(classes))
    _check_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    written = {"summary.md"}

    if train:  # a log of validations alone (logged before the first loss line) draws no empty loss plot
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
        marker = "." if len(train) < 50 else None  # a short run's few points (one alone draws no line)
        losses = [_value(r, "loss") for r in train]
        ax.plot([r["iter"] for r in train], losses, color="#4878a8", marker=marker)
        ax.set_xlabel("iteration")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        finite = [v for v in losses if math.isfinite(v) and v > 0]
        if finite and max(finite) <= 1.02 * min(finite):  # one point, or a flat curve: not a whole decade around it
            ax.set_ylim(min(finite) / 1.1, max(finite) * 1.1)
        ax.yaxis.set_major_formatter(_plain_log_formatter(minor=False))
        ax.yaxis.set_minor_formatter(_plain_log_formatter(minor=True))
        ax.grid(alpha=0.3)
        _save(fig, out / "loss.png")
        written.add("loss.png")

    lines = [f"{_TITLE}{run_dir}", ""]
    if not val:
        lines += [_no_validation(config, train)]
    else:
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
        instances = any("instances" in r for r in val)
        curves = [("miou", "mIoU"), ("pixel_accuracy", "pixel accuracy"), ("mean_f1", "mean F1")]
        if instances:
            curves += [("instances.mean_ap", "mean AP (0.5-0.9)"), ("instances.pq", "PQ")]
        for key, label in curves:  # a missing value (NaN, logged as null) is a gap, not a drop to 0
            ax.plot([r["iter"] for r in val], [100 * _value(r, key) for r in val], marker="o", label=label)
        ax.set_xlabel("iteration")
        ax.set_ylabel("validation (%)")
        ax.grid(alpha=0.3)
        ax.legend()
        _save(fig, out / "val.png")
        written.add("val.png")
        # best.pt's choice: the best mean AP for an instance method, else the best mIoU (engine/trainer.py)
        chosen = "instances.mean_ap" if instances else "miou"
        best = max(val, key=lambda r: -1 if math.isnan(_value(r, chosen)) else _value(r, chosen))
        plot_per_class(best["iou"], classes, out / "per_class_iou.png")
        written.add("per_class_iou.png")
        confusion = best.get("confusion_matrix") is not None
        if confusion:
            plot_confusion_matrix(
                best["confusion_matrix"],
                classes,
                out / "confusion.png",
                title=f"validation at iteration {best['iter']} (row-normalised)",
            )
            written.add("confusion.png")
        counted = best.get("instances") or {}
        scores = (
            f"mean AP **{_fmt(counted.get('mean_ap'))}**, PQ {_fmt(counted.get('pq'))}, mIoU {_fmt(best.get('miou'))}"
            if instances
            else f"mIoU **{_fmt(best.get('miou'))}**"
        )
        lines += [
            f"Best validation {scores} at iteration {best['iter']} "
            f"(pixel accuracy {_fmt(best.get('pixel_accuracy'))}, mean F1 {_fmt(best.get('mean_f1'))}, "
            f"fwIoU {_fmt(best.get('fwiou'))}).",
            *(  # a two-class run (ISBI 2012): the measures its papers report, of the last validation
                [
                    "",
                    f"Last validation (iteration {val[-1]['iter']}): pixel error "
                    f"{1 - val[-1]['pixel_accuracy']:.4f}; 1 - best F-score (the ISBI challenge's measure) "
                    f"{val[-1]['challenge_pixel_error']:.4f}.",
                ]
                if val[-1].get("challenge_pixel_error") is not None
                else []
            ),
            "",
            "| class | IoU (%) |",
            "|---|---:|",
            *[f"| {markdown_cell(c)} | {_fmt(v)} |" for c, v in zip(classes, best["iou"], strict=True)],
            "",
            "![validation](val.png) ![per-class IoU](per_class_iou.png)",
            "",
            "![confusion matrix](confusion.png)" if confusion else "",
        ]
    if train:
        last = train[-1]
        wait = f" ({100 * last['data_wait_share']:.0f} % of it waiting for data)" if "data_wait_share" in last else ""
        minutes = f"{last['train_seconds'] / 60:.1f}" if last.get("train_seconds") is not None else "n/a"
        speed = f"{last['images_per_s']:.2f}" if last.get("images_per_s") is not None else "n/a"
        lines += [
            "",
            f"{last['iter']} iterations, {minutes} min of training (evaluation excluded), last {speed} images/s{wait}.",
            "",
            "![loss](loss.png)",
        ]
    if config:
        lines += ["", "## Config", "", "```yaml", dump_yaml(config).strip(), "```"]
    summary = out / "summary.md"
    atomic_write_text(summary, "\n".join(lines) + "\n")
    for name in REPORT_FILES:  # an earlier report's pictures of what this log no longer holds: they would mislead
        if name not in written and (out / name).is_file():
            (out / name).unlink()
    return summary


def _no_validation(config: dict[str, Any], train: list[dict[str, Any]]) -> str:
    """The summary's line for a log without validation records, with the likely reason where the config tells."""
    data, train_cfg = config.get("data"), config.get("train")
    data = data if isinstance(data, dict) else {}
    train_cfg = train_cfg if isinstance(train_cfg, dict) else {}
    line = "No validation was logged"
    interval = train_cfg.get("eval_interval")
    if "val_split" in data and not data["val_split"]:
        return f"{line}: data.val_split is null, so the run trained without validation."
    if isinstance(interval, int) and not isinstance(interval, bool) and train and train[-1]["iter"] < interval:
        return (
            f"{line}: the run stopped at iteration {train[-1]['iter']}, before its first validation "
            f"(train.eval_interval is {interval}; a run validates every train.eval_interval iterations and at "
            "its end)."
        )
    return (
        f"{line}: the run stopped before its first validation (a run validates every train.eval_interval "
        "iterations and at its end), or trained without one (data.val_split null)."
    )


def _read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        config = load_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise DataError(f"{path} is not valid YAML ({yaml_problem(e)}); restore the run's config.yaml") from None
    if not isinstance(config, dict):
        raise DataError(f"{path} holds no mapping of config sections; restore the run's config.yaml")
    return config


def _check_out(out: Path, overwrite: bool) -> None:
    """``out`` is a folder, and holds no file of a report's names that an earlier report did not write (its
    summary.md's title tells), unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file: give a folder for the report")
    folders = [name for name in REPORT_FILES if (out / name).is_dir()]
    if folders:
        raise DataError(f"--out {out} holds a folder named {folders[0]}: move it, or choose another folder")
    summary = out / "summary.md"
    try:
        ours = summary.is_file() and summary.read_text(errors="replace").startswith(_TITLE)
    except OSError:
        ours = False
    taken = [name for name in REPORT_FILES if (out / name).exists()]
    if taken and not ours and not overwrite:
        raise ConfigError(
            f"--out {out} holds {', '.join(taken)}, not from an earlier report: pass --overwrite to replace "
            "them, or choose another folder"
        )


def _plain_log_formatter(minor: bool):
    """Tick labels of a log axis in plain decimals (0.42, 2.41; not 4.2x10^-1), on the ticks matplotlib's own log
    formatter labels: every minor tick within a short range, a few within a decade, none beyond."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x:.4g}" if super().__call__(x, pos) else ""

    return PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4) if minor else None)


def _value(record: dict[str, Any], key: str) -> float:
    """``record[key]`` (``a.b``: nested) as a float, NaN where missing or null."""
    value: Any = record
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float("nan") if value is None else float(value)


def _class_names(run_dir: Path, config: dict[str, Any], val: list[dict[str, Any]]) -> list[str]:
    from .models import load_checkpoint

    for name in ("best.pt", "last.pt"):
        if (run_dir / name).exists():
            return list(load_checkpoint(run_dir / name)["meta"]["classes"])
    iou = val[0].get("iou") if val else None
    return [f"class {i}" for i in range(len(iou) if isinstance(iou, list) else 0)]
