"""Pictures: colour masks, overlays of every image kind, instance colours, and the run report's choices."""

from __future__ import annotations

import colorsys
import json

import numpy as np

from pixelwise.report import write_report
from pixelwise.visualize import colorize, instance_colors, instance_overlay, overlay, overlay_palette


def test_colorize_gives_ids_outside_the_palette_the_ignore_colour():
    palette = [[10, 20, 30], [200, 100, 50]]
    out = colorize(np.array([[0, 1, 256, -1, 255]]), palette, ignore_color=(1, 2, 3))
    assert out[0].tolist() == [[10, 20, 30], [200, 100, 50], [1, 2, 3], [1, 2, 3], [1, 2, 3]]  # 256 wrapped to 0


def test_grey_palettes_get_a_distinct_colour_for_every_class():
    assert len({tuple(c) for c in overlay_palette([[i, i, i] for i in range(40)])}) == 40  # 15 before


def test_overlay_takes_rgba_16_bit_and_float_images():
    none = np.zeros((2, 3, 3), np.uint8)
    for image in (
        np.full((2, 3, 4), 204, np.uint8),  # RGBA: alpha dropped (was a broadcast error)
        np.full((2, 3, 1), 204 * 257, np.uint16),  # 16-bit: 0..65535 (was white)
        np.full((2, 3), 0.8, np.float32),  # float in [0, 1] (was black)
    ):
        assert overlay(image, none, 0.0).tolist() == np.full((2, 3, 3), 204).tolist()


def test_instance_colours_follow_the_ids_present_not_the_largest():
    expected = np.round(np.asarray(colorsys.hsv_to_rgb((4_999_999 * 0.618033988749895) % 1.0, 0.85, 1.0)) * 255)
    inst = np.zeros((6, 6), np.int64)
    inst[1:5, 1:5] = 5_000_000  # one object with a large id: colours for one id, not five million
    out = instance_overlay(np.zeros((6, 6, 3), np.uint8), inst, alpha=1.0)
    assert out[2, 2].tolist() == expected.tolist() and out[0, 0].tolist() == [0, 0, 0]
    assert (
        instance_colors(3)[2].tolist()
        == np.round(np.asarray(colorsys.hsv_to_rgb(0.618033988749895, 0.85, 1.0)) * 255).tolist()
    )
    assert instance_overlay(np.zeros((3, 3, 3), np.uint8), -np.ones((3, 3), int)).shape == (3, 3, 3)


def test_the_report_of_an_instance_run_picks_best_pt_s_iteration(tmp_path):
    """best.pt of an instance method is the best mean AP; the report chose the best mIoU, and drew null as 0."""
    records = [
        {"type": "train", "iter": 1, "loss": 1.0, "train_seconds": 1.0, "images_per_s": 2.0},
        {"type": "val", "iter": 1, "miou": 0.6, "pixel_accuracy": 0.9, "mean_f1": 0.7, "fwiou": 0.8,
         "iou": [0.7, 0.5], "instances": {"mean_ap": 0.1, "pq": 0.2}},
        {"type": "val", "iter": 2, "miou": 0.5, "pixel_accuracy": None, "mean_f1": 0.6, "fwiou": 0.7,
         "iou": [0.6, 0.4], "instances": {"mean_ap": 0.4, "pq": 0.3}},
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = write_report(tmp_path).read_text()
    assert "Best validation mean AP **40.00**, PQ 30.00, mIoU 50.00 at iteration 2 (pixel accuracy n/a" in text


def _run_dir(path, losses, val_rows=None):
    path.mkdir(parents=True, exist_ok=True)
    records = [{"type": "train", "iter": i + 1, "loss": v} for i, v in enumerate(losses)]
    for i, (iou, matrix) in enumerate(val_rows or []):
        records.append(
            {"type": "val", "iter": i + 1, "miou": 0.5, "pixel_accuracy": 0.5, "mean_f1": 0.5, "fwiou": 0.5,
             "iou": iou, "confusion_matrix": matrix}
        )  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _loss_axis_labels(monkeypatch, run, out):
    """The y tick labels of the report's loss plot, as drawn."""
    import matplotlib.figure

    seen = []
    real = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        ax = fig.axes[0]
        if ax.get_ylabel() == "training loss":
            fig.canvas.draw()
            lo, hi = ax.get_ylim()
            ticks = ax.yaxis.get_major_ticks() + ax.yaxis.get_minor_ticks()
            seen.append(sorted((t.get_loc(), t.label1.get_text()) for t in ticks if lo <= t.get_loc() <= hi))
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    write_report(run, out)
    return [text for _, text in seen[0] if text]


def test_the_loss_axis_labels_are_distinct_and_true(tmp_path, monkeypatch):
    """A short run's losses 2.41-2.46 had five ticks labelled "2.4" and one "2.5"; a fall over 1.6 decades labelled
    every minor tick, "0.9" on top of "1"."""
    labels = _loss_axis_labels(monkeypatch, _run_dir(tmp_path / "a", [2.4477, 2.4621, 2.4562, 2.4122]), tmp_path / "o")
    assert labels == ["2.41", "2.42", "2.43", "2.44", "2.45", "2.46"]
    labels = _loss_axis_labels(monkeypatch, _run_dir(tmp_path / "b", [2.0, 1.0, 0.3, 0.054]), tmp_path / "p")
    assert labels == ["0.1", "1"]
    # one point: labels around it (matplotlib's own range for it, 0.9 to 11, showed "1" and "10" alone)
    labels = _loss_axis_labels(monkeypatch, _run_dir(tmp_path / "c", [2.43]), tmp_path / "q")
    assert len(labels) >= 3 and all(2.2 < float(v) < 2.7 for v in labels)


def test_report_replaces_its_own_files_and_no_one_elses(tmp_path, capsys):
    from pixelwise.cli import main

    run = _run_dir(tmp_path / "run", [1.0, 0.5])
    assert main(["report", str(run)]) == 0 and main(["report", str(run)]) == 0  # its own earlier report: replaced
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "summary.md").write_text("my own notes\n")
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(mine)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"pixelwise report: error: --out {mine} holds summary.md, not from an earlier report: pass --overwrite to "
        "replace them, or choose another folder"
    )
    assert (mine / "summary.md").read_text() == "my own notes\n" and not (mine / "loss.png").exists()
    assert main(["report", str(run), "--out", str(mine), "--overwrite"]) == 0
    assert (mine / "summary.md").read_text().startswith("# Run report: ")
    odd = tmp_path / "odd"
    (odd / "summary.md").mkdir(parents=True)
    assert main(["report", str(run), "--out", str(odd), "--overwrite"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"--out {odd} holds a folder named summary.md: move it, or choose another folder")
    )
    assert not (odd / "loss.png").exists()


def test_report_of_a_damaged_run_is_one_line_and_makes_no_folder(tmp_path, capsys):
    from pixelwise.cli import main

    bad_config = _run_dir(tmp_path / "a", [1.0])
    (bad_config / "config.yaml").write_text("data: [1,\n")
    bad_log = _run_dir(tmp_path / "b", [1.0])
    with open(bad_log / "metrics.jsonl", "a") as f:
        f.write("[1, 2]\n" + json.dumps({"type": "train", "iter": 2, "loss": 0.5}) + "\n")
    for run, message in (
        (bad_config, f"{bad_config / 'config.yaml'} is not valid YAML ("),
        (bad_log, f"{bad_log / 'metrics.jsonl'}: line 2 is not a JSON record; remove it or restore the file"),
    ):
        assert main(["report", str(run)]) == 2
        assert capsys.readouterr().err.startswith(f"pixelwise report: error: {message}")
        assert not (run / "report").exists()


def test_report_of_a_log_it_cannot_draw_is_one_line_naming_the_record(tmp_path, capsys):
    """A stray byte, a record without its iteration or per-class values, or values of another class count: a
    traceback before (UnicodeDecodeError, KeyError, zip's ValueError), and pictures left behind that the next
    report then refused to replace."""
    from pixelwise.cli import main

    good = [[0.5, 0.25], [[3, 1], [1, 3]]]
    log = tmp_path / "x" / "metrics.jsonl"
    cases = {
        b'{"type": "train", "iter": 1, "loss": 1.0, "name": "\xff"}\n': f"{log}: line 1 is not a JSON record",
        b'{"type": "train", "loss": 1.0}\n': f"{log}: training record 2 has no integer 'iter'",
        b'{"type": "val", "iter": 2}\n': f"{log}: validation record 2 (iteration 2) has no 'iou' list of 2 classes",
        b'{"type": "val", "iter": 2, "iou": [0.5, 0.2, 0.1]}\n': "has no 'iou' list of 2 classes",
        b'{"type": "val", "iter": 2, "iou": [0.5, 0.2], "confusion_matrix": [[1]]}\n': (
            f"{log}: validation record 2 (iteration 2) has a 'confusion_matrix' that is not 2 x 2"
        ),
    }
    for line, message in cases.items():
        run = _run_dir(tmp_path / "x", [1.0], [good])
        first = line.startswith(b'{"type": "train", "iter": 1')
        body = log.read_bytes()
        log.write_bytes(line + body if first else body + line)
        assert main(["report", str(run)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "restore" in err, err
        assert not (run / "report").exists()


def test_a_report_removes_its_own_pictures_that_no_longer_match_the_log(tmp_path, capsys):
    """A log without validation (records removed, or a run that restarted) left the earlier report's val.png,
    per_class_iou.png and confusion.png beside the new summary; a user's own files there stay."""
    from pixelwise.cli import main

    good = [[0.5, 0.25], [[3, 1], [1, 3]]]
    run = _run_dir(tmp_path / "run", [1.0, 0.5], [good])
    out = run / "report"
    assert main(["report", str(run)]) == 0
    assert {p.name for p in out.iterdir()} == {
        "loss.png",
        "val.png",
        "per_class_iou.png",
        "confusion.png",
        "summary.md",
    }
    (out / "mine.txt").write_text("my notes\n")
    with open(_run_dir(run, [1.0, 0.5]) / "metrics.jsonl", "a") as f:  # validation without a confusion matrix
        f.write(json.dumps({"type": "val", "iter": 2, "miou": 0.5, "iou": [0.5, 0.25]}) + "\n")
    assert main(["report", str(run)]) == 0
    assert {p.name for p in out.iterdir()} == {"loss.png", "val.png", "per_class_iou.png", "summary.md", "mine.txt"}
    _run_dir(run, [1.0, 0.5])  # no validation
    assert main(["report", str(run)]) == 0
    assert {p.name for p in out.iterdir()} == {"loss.png", "summary.md", "mine.txt"}
    assert "val.png" not in (out / "summary.md").read_text()
    assert (out / "mine.txt").read_text() == "my notes\n"


def test_report_of_an_empty_log_is_one_line_and_makes_no_folder(tmp_path, capsys):
    """A run killed before it logged anything: "report written", a blank loss plot with ticks -0.04 to 0.04 and a
    summary of the config alone."""
    from pixelwise.cli import main

    for body in ("", "\n"):
        run = tmp_path / "run"
        run.mkdir(exist_ok=True)
        (run / "metrics.jsonl").write_text(body)
        assert main(["report", str(run)]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"pixelwise report: error: {run / 'metrics.jsonl'} holds no training or validation record (the run "
            "stopped before it logged any): nothing to report\n"
        )
        assert not (run / "report").exists()


def test_report_of_a_log_without_validation_says_so_and_why(tmp_path):
    """Training records alone: the summary said nothing of the validation it lacks."""
    run = _run_dir(tmp_path / "run", [1.0, 0.5])
    text = write_report(run).read_text()
    assert "No validation was logged" in text and "![loss](loss.png)" in text
    (run / "config.yaml").write_text("data:\n  val_split: null\ntrain:\n  eval_interval: 200\n")
    text = write_report(run).read_text()
    assert "No validation was logged: data.val_split is null" in text
    (run / "config.yaml").write_text("data:\n  val_split: val\ntrain:\n  eval_interval: 200\n")
    text = write_report(run).read_text()
    assert "No validation was logged" in text and "before its first validation" in text
    assert "train.eval_interval is 200" in text and "iteration 2" in text
    assert not (run / "report" / "val.png").exists()


def test_report_and_pictures_take_class_names_with_markup(tmp_path, monkeypatch):
    """Class names are the user's: a | split the Markdown table's cell (its value went to a third column), < and &
    came through as HTML, a $...$ stopped the pictures with a mathtext parse error."""
    import pixelwise.report as report

    names = ["back|ground", "<b>fg</b> & co", "$\\nope$"]
    run = _run_dir(tmp_path / "run", [1.0], [[[0.5, 0.25, 0.125], [[3, 1, 0], [1, 3, 0], [0, 0, 2]]]])
    monkeypatch.setattr(report, "_class_names", lambda *args: names)
    text = write_report(run).read_text()
    assert "| back\\|ground | 50.00 |" in text
    assert "| &lt;b&gt;fg&lt;/b&gt; &amp; co | 25.00 |" in text
    assert "| $\\nope$ | 12.50 |" in text
    assert (run / "report" / "confusion.png").is_file() and (run / "report" / "per_class_iou.png").is_file()


def test_the_legend_draws_letters_beyond_ascii(tmp_path):
    """Pillow's built-in font has ASCII letters only: "Straße" and "Straæe" were drawn alike, a box for the
    letter it lacks."""
    from pixelwise.visualize import legend

    def text_pixels(name):
        return legend([name], [[0, 0, 0]])[24:, 130:]  # the class name's column, below the titles

    assert not np.array_equal(text_pixels("Stra\u00dfe"), text_pixels("Stra\u00e6e"))


def test_confusion_row_of_a_class_without_pixels_is_grey(tmp_path):
    from PIL import Image

    from pixelwise.visualize import NO_PIXELS_GREY, plot_confusion_matrix

    grey = tuple(int(NO_PIXELS_GREY[i : i + 2], 16) for i in (1, 3, 5))
    pictures = {}
    for name, matrix in (("full", [[5, 5], [1, 9]]), ("empty", [[5, 5], [0, 0]])):
        plot_confusion_matrix(matrix, ["a", "b"], tmp_path / f"{name}.png")
        pixels = np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB")).reshape(-1, 3)
        pictures[name] = int((pixels == grey).all(1).sum())
    assert pictures["full"] < 100 and pictures["empty"] > 10000  # the whole lower row, not "0 %" white


def test_the_report_of_a_two_class_run_gives_the_measures_its_papers_report(tmp_path):
    """The README quotes the ISBI job's pixel error and 1 - best F-score; the report's summary showed neither."""
    run = _run_dir(tmp_path / "run", [1.0, 0.5], [([0.6, 0.9], [[5, 1], [1, 9]]), ([0.7, 0.9], [[6, 0], [1, 9]])])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record, error in zip([r for r in records if r["type"] == "val"], (0.08, 0.07), strict=True):
        record["pixel_accuracy"], record["challenge_pixel_error"] = 0.92, error
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = write_report(run).read_text()
    assert (
        "Last validation (iteration 2): pixel error 0.0800; 1 - best F-score (the ISBI challenge's measure) 0.0700."
        in text
    )
    assert "ISBI challenge" not in write_report(_run_dir(tmp_path / "other", [1.0], [([0.5, 0.5], None)])).read_text()
