"""The result of an import (:class:`ImportSummary`): what was written where, per split, and what was left out and
why; as JSON-ready data and as the report ``pixelwise data import`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..check import text_table


@dataclass
class ImportSummary:
    """The result of :func:`pixelwise.data.importers.import_dataset`: what was written where, per split the
    images, masks and instance maps written and the pixels of each class, and everything left out and why."""

    format: str
    source: Path
    dest: Path
    classes: list[str]
    ignore_index: int
    workers: int
    images: dict[str, int] = field(default_factory=dict)
    masks: dict[str, int] = field(default_factory=dict)
    instance_maps: dict[str, int] = field(default_factory=dict)
    instances: dict[str, int] = field(default_factory=dict)
    histogram: dict[str, list[int]] = field(default_factory=dict)
    ignore_pixels: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total_images(self) -> int:
        return sum(self.images.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data: paths as strings, skipped entries as ``{"file", "reason"}``."""
        return {
            "format": self.format,
            "source": str(self.source),
            "dest": str(self.dest),
            "classes": list(self.classes),
            "ignore_index": self.ignore_index,
            "workers": self.workers,
            "images": dict(self.images),
            "masks": dict(self.masks),
            "instance_maps": dict(self.instance_maps),
            "instances": dict(self.instances),
            "histogram": {k: list(v) for k, v in self.histogram.items()},
            "ignore_pixels": dict(self.ignore_pixels),
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "notes": list(self.notes),
            "seconds": self.seconds,
        }

    def format_text(self, max_files: int = 3) -> str:
        """A readable report: where, the notes, images per split, pixels per class per split, and what was
        skipped grouped by reason (``max_files`` file names per reason)."""
        workers = f"{self.workers} worker" + ("s" if self.workers != 1 else "")
        lines = [
            f"imported {self.format} from {self.source} into {self.dest}: {len(self.classes)} classes, ignore "
            f"{self.ignore_index}, {self.total_images} images in {self.seconds:.1f} s ({workers})"
        ]
        lines += [f"note: {n}" for n in self.notes]
        splits = list(self.images)
        rows = [["split", "images", "masks", "instance maps", "instances"]]
        for s in splits:
            has_inst = s in self.instance_maps
            rows.append(
                [
                    s,
                    str(self.images[s]),
                    str(self.masks.get(s, 0)) if s in self.masks else "-",
                    str(self.instance_maps[s]) if has_inst else "-",
                    str(self.instances.get(s, 0)) if has_inst else "-",
                ]
            )
        lines += ["", *text_table(rows)]
        labelled = [s for s in splits if s in self.histogram]
        if labelled:
            rows = [["class", *(f"{s} pixels" for s in labelled), *(f"{s} %" for s in labelled)]]
            totals = [max(1, sum(self.histogram[s]) + self.ignore_pixels[s]) for s in labelled]
            names = [*self.classes, f"(ignore {self.ignore_index})"]
            for i, name in enumerate(names):
                values = [self.histogram[s][i] if i < len(self.classes) else self.ignore_pixels[s] for s in labelled]
                rows.append(
                    [
                        name,
                        *(f"{v:,}" for v in values),
                        *(f"{100 * v / t:.2f}" for v, t in zip(values, totals, strict=True)),
                    ]
                )
            lines += ["", *text_table(rows)]
        if self.skipped:
            groups: dict[str, list[str]] = {}
            for file, reason in self.skipped:
                groups.setdefault(reason, []).append(file)
            lines += ["", f"skipped ({len(self.skipped)}):"]
            for reason, files in groups.items():
                names = ", ".join(files[:max_files]) + (
                    f" and {len(files) - max_files} more" if len(files) > max_files else ""
                )
                lines.append(f"  {reason} ({len(files)}): {names}")
        else:
            lines += ["", "skipped: nothing"]
        return "\n".join(lines)
