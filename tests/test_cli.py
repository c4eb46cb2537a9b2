"""End to end through the command line, on the real ISBI 2012 images, and exact resume."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from pixelwise.errors import ConfigError
from pixelwise.models.weights import load_checkpoint

from .conftest import REPO, write_dataset


def run_cli(*args, env_root=None, check=True):
    env = dict(os.environ)
    if env_root is not None:
        env["PIXELWISE_DATA"] = str(env_root)
    proc = subprocess.run(
        [sys.executable, "-m", "pixelwise", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"pixelwise {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.realdata
@pytest.mark.slow
def test_train_eval_predict_on_isbi(data_root, tmp_path):
    run = tmp_path / "run"
    trained = run_cli(
        "train",
        REPO / "configs/isbi2012_unet.yaml",
        "--run-dir",
        run,
        "--no-progress",
        "--set",
        "train.iters=4",
        "--set",
        "train.eval_interval=2",
        "--set",
        "data.crop_size=64",
        "--set",
        "data.batch_size=2",
        "--set",
        "model.base_channels=4",
        "--set",
        "train.log_interval=1",
        "--set",
        "data.num_workers=0",
        env_root=data_root,
    )
    assert {p.name for p in run.iterdir()} >= {"last.pt", "best.pt", "config.yaml", "metrics.jsonl"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["type"] == "train"] == [1, 2, 3, 4]
    assert [r["iter"] for r in records if r["type"] == "val"] == [2, 4]
    last_val = [r for r in records if r["type"] == "val"][-1]
    # a two-class run ends naming the measures its papers report, of the last validation
    assert (
        f"last val pixel error {1 - last_val['pixel_accuracy']:.4f}; "
        f"1 - best F-score of 'cell' (the ISBI challenge's measure) {last_val['challenge_pixel_error']:.4f}"
        in trained.stdout
    )
    assert all(0 <= r["challenge_pixel_error"] <= 1 for r in records if r["type"] == "val")
    # the validation's own line names both measures too (it said "challenge pixel error", the closing line
    # "pixel error", of two different numbers); and the closing lines say what to run next
    assert (
        f"iter 4: val pixel error {1 - last_val['pixel_accuracy']:.4f}; 1 - best F-score (the ISBI challenge's "
        f"measure) {last_val['challenge_pixel_error']:.4f}" in trained.stderr + trained.stdout
    )
    assert trained.stdout.strip().splitlines()[-1] == (
        f"next: pixelwise eval {run / 'last.pt'} (add --json F) | pixelwise predict {run / 'last.pt'} IMAGES --out "
        f"DIR | pixelwise report {run}"
    )
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["iters"] == 4
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["meta"]["classes"] == ["membrane", "cell"] and ckpt["meta"]["model"]["in_channels"] == 1

    out_json = tmp_path / "eval.json"
    confusion = tmp_path / "confusion.png"
    proc = run_cli(
        "eval", run / "best.pt", "--split", "val", "--json", out_json, "--no-progress", "--data-root", data_root,
        "--confusion", confusion,
    )  # fmt: skip
    assert Image.open(confusion).format == "PNG" and min(Image.open(confusion).size) > 100
    assert "membrane" in proc.stdout and "miou" in proc.stdout
    assert "\nprotocol: whole image, scale 1, as is: 1 pass(es) per image\n" in proc.stdout
    result = json.loads(out_json.read_text())
    m = result["metrics"]
    assert result["num_images"] == 6 and result["split"] == "val"
    assert sum(sum(row) for row in m["confusion_matrix"]) == 6 * 512 * 512  # no ignore pixels in ISBI
    assert m["miou"] == pytest.approx(np.nanmean([v if v is not None else np.nan for v in m["iou"]]))
    assert 0 <= m["pixel_accuracy"] <= 1 and len(m["f1"]) == 2
    # the challenge's pixel error: at threshold 0.5 its F-score is the argmax's cell F1 (up to exact ties)
    challenge = m["challenge_pixel_error"]
    assert challenge["f_scores"][5] == pytest.approx(m["f1"][1], abs=1e-4)
    assert challenge["pixel_error"] == pytest.approx(1 - max(challenge["f_scores"]))
    assert challenge["pixel_error"] <= 1 - m["f1"][1] + 1e-4 and "challenge_pixel_error" in proc.stdout

    out = tmp_path / "pred"
    images = sorted((data_root / "isbi2012_membrane/images/test").glob("*.png"))[:3]
    run_cli(
        "predict", run / "best.pt", images[0], str(images[1].parent / "slice_0[12].png"), "--out", out, "--no-progress"
    )
    masks = sorted((out / "masks").glob("*.png"))
    assert [p.name for p in masks] == ["slice_00.png", "slice_01.png", "slice_02.png"]
    mask = np.asarray(Image.open(masks[0]))
    assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 1}
    assert Image.open(out / "color/slice_00.png").mode == "RGB"
    assert Image.open(out / "overlay/slice_00.png").size == (512, 512)


def test_cli_errors_are_one_line(toy_root, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "unet"}, "data": {"dataset": "toy"}}))
    proc = run_cli("train", cfg, "--set", "train.itres=3", env_root=toy_root, check=False)
    assert proc.returncode == 2
    assert "unknown config key(s) train.itres; valid:" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(
        "train", cfg, "--set", "model.num_classes=7", "--run-dir", tmp_path / "r", env_root=toy_root, check=False
    )
    assert proc.returncode == 2 and "model.num_classes=7 but data set 'toy' has 3 classes" in proc.stderr
    proc = run_cli("eval", tmp_path / "nope.pt", check=False)
    assert proc.returncode == 2 and "nope.pt does not exist" in proc.stderr


def test_label_error_from_a_loader_worker_is_one_line(tmp_path):
    write_dataset(tmp_path)
    mask = np.full((20, 24), 9, np.uint8)
    Image.fromarray(mask, mode="L").save(tmp_path / "toy/masks/train/s00.png")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "unet", "base_channels": 2},
                "data": {"dataset": "toy", "crop_size": 16, "num_workers": 1, "batch_size": 4},
                "train": {"iters": 2},
            }
        )
    )
    # the worker path itself (the pre-flight data check would catch the mask before any worker starts)
    proc = run_cli(
        "train", cfg, "--run-dir", tmp_path / "r", "--no-progress", "--no-check-data", env_root=tmp_path, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "s00.png holds label value(s) [9]" in proc.stderr


def test_weight_map_verb_draws_the_paper_s_weights(tmp_path, capsys):
    """Two cells split by a one-pixel gap: every gap pixel is one pixel from both (d1 = d2 = 1), so its weight is
    w_c + w0 exp(-4 / (2 sigma^2)); here w0 = 5, sigma = 2: 5 exp(-1/2) = 3.0327."""
    from pixelwise.cli import main

    def weight_map(*argv):  # the verb in this process (a fresh interpreter per call took seconds each)
        code = main(["weight-map", *map(str, argv)])
        out = capsys.readouterr()
        return code, out.out, out.err

    mask = np.ones((12, 12), np.uint8)
    mask[:, 5] = 0
    Image.fromarray(mask, mode="L").save(tmp_path / "m.png")
    code, out, _ = weight_map(tmp_path / "m.png", "--out", tmp_path / "w.png", "--w0", 5, "--sigma", 2, "--no-balance")
    # mean: 132 cell pixels of weight 1 and 12 gap pixels of 4.0327
    assert code == 0 and "(min 1.000, mean 1.253, max 4.033)" in out
    assert Image.open(tmp_path / "w.png").format == "PNG"
    # class balance w_c = n / (k n_c): 144 / (2 * 12) = 6 on the gap (6 + 3.0327), 144 / (2 * 132) = 0.545 on the cells
    code, out, _ = weight_map(tmp_path / "m.png", "--out", tmp_path / "b.png", "--w0", 5, "--sigma", 2)
    assert code == 0 and "(min 0.545, " in out and "max 9.033)" in out
    # the objects are the components of --foreground: with class 0 as the objects there is only one, no border term
    code, out, _ = weight_map(tmp_path / "m.png", "--out", tmp_path / "f.png", "--foreground", 0, "--no-balance")
    assert code == 0 and "(min 1.000, mean 1.000, max 1.000)" in out
    code, _, err = weight_map(tmp_path / "nope.png", "--out", tmp_path / "n.png")
    assert code == 2 and err.strip().count("\n") == 0 and "nope.png" in err


def test_output_paths_are_checked_before_any_work(tmp_path, toy_root, capsys, monkeypatch):
    """An existing --json was replaced silently (after a whole evaluation); a folder, a path under a file or a
    picture suffix matplotlib cannot write failed with a traceback after the work."""
    from pixelwise.cli import main

    def error(*argv):
        assert main([str(a) for a in argv]) == 2
        return capsys.readouterr().err.strip()

    existing = tmp_path / "m.json"
    existing.write_text('{"keep": 1}')
    (tmp_path / "a.txt").write_text("x")
    missing = tmp_path / "none.pt"  # the outputs are refused before the checkpoint is even read
    assert error("eval", missing, "--json", existing) == (
        f"pixelwise eval: error: --json {existing} exists: pass --overwrite to replace it, or choose another file"
    )
    assert existing.read_text() == '{"keep": 1}'
    assert error("eval", missing, "--json", tmp_path) == (
        f"pixelwise eval: error: --json {tmp_path} is a folder: give a file name"
    )
    assert error("eval", missing, "--confusion", tmp_path / "a.txt" / "c.png") == (
        f"pixelwise eval: error: --confusion {tmp_path / 'a.txt' / 'c.png'}: {tmp_path / 'a.txt'} is a file, not a "
        "folder; choose another place"
    )
    assert error("eval", missing, "--confusion", tmp_path / "c.txt") == (
        f"pixelwise eval: error: --confusion {tmp_path / 'c.txt'}: give a file ending in .png, .jpg, .jpeg, .pdf, "
        ".svg, .svgz, .tif, .tiff, .webp, .eps, .ps"
    )
    assert error("eval", missing, "--json", existing, "--overwrite") == (
        f"pixelwise eval: error: checkpoint {missing} does not exist"
    )
    # one file for both: the picture replaced the metrics, each reported as written
    same = tmp_path / "both.png"
    assert error("eval", missing, "--json", same, "--confusion", same) == (
        f"pixelwise eval: error: --json and --confusion both name {same}: give each its own file"
    )
    assert error("data", "check", "toy", "--data-root", toy_root, "--json", existing) == (
        f"pixelwise data check: error: --json {existing} exists: pass --overwrite to replace it, or choose another file"
    )
    mask = tmp_path / "m.png"
    Image.fromarray(np.ones((8, 8), np.uint8)).save(mask)
    assert error("weight-map", mask, "--out", mask) == (
        f"pixelwise weight-map: error: --out {mask} exists: pass --overwrite to replace it, or choose another file"
    )
    assert error("weight-map", mask, "--out", tmp_path / "w.png", "--foreground", 9) == (
        f"pixelwise weight-map: error: {mask} holds no pixel of class 9 (it holds 1): --foreground names the class "
        "whose connected components are the objects"
    )  # was a flat map of the class-balance term alone
    assert error("models", "--num-classes", -2) == "pixelwise models: error: --num-classes -2: must be >= 1"
    assert error("models", "--size", -5) == (
        "pixelwise models: error: --size -5: the square input side the FLOPs are counted at, must be >= 1"
    )  # was a traceback from torch ("negative dimension")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not a checkpoint")
    assert error("export", onnx, "--out", tmp_path / "n.onnx") == (
        f"pixelwise export: error: cannot load checkpoint {onnx}: it is an ONNX file, not a checkpoint: predict and "
        "serve run it (--backend onnxruntime); eval, export and crf-search need the run's .pt"
    )
    config = tmp_path / "c.yaml"
    config.write_text("model: {name: unet}\ndata: {dataset: toy}\ncrf: {iterations: 2.5}\n")
    assert error("train", config, "--data-root", toy_root) == (
        "pixelwise train: error: config key crf.iterations should be int, got 2.5"
    )
    # a file-system error the checks could not foresee (permissions, a full disk): one line naming the path
    import pixelwise.cli as cli

    def denied(args):
        raise PermissionError(13, "Permission denied", "/data/out/m.json")

    monkeypatch.setattr(cli.verbs, "cmd_models", denied)
    assert error("models") == (
        "pixelwise models: error: /data/out/m.json: Permission denied; check the path and its permissions"
    )
    assert error("predict", missing, mask, "--out", tmp_path / "p", "--device", "nonsense") == (
        "pixelwise predict: error: device 'nonsense': give auto, cpu, cuda or cuda:N"
    )


def test_eval_reads_images_with_as_many_workers_as_the_process_has_cpus(monkeypatch):
    """Two loader workers under one CPU (taskset) drew torch's warning about too many workers."""
    import pixelwise.cli as cli
    import pixelwise.engine.evaluator as evaluator

    seen = []

    def fake_evaluate(model, dataset, **kwargs):
        seen.append(kwargs["num_workers"])
        raise ConfigError("stop here")

    monkeypatch.setattr(evaluator, "evaluate", fake_evaluate)
    monkeypatch.setattr(evaluator, "Predictor", lambda *a, **k: FakePredictor())

    class NoImages(list):  # a split whose sizes eval checks first: none here
        samples, image_sizes = [], []

    monkeypatch.setattr(evaluator, "checkpoint_dataset", lambda *a, **k: NoImages())
    for cpus, flag, expected in ((1, [], 1), (2, [], 2), (8, [], 2), (1, ["--num-workers", "3"], 3)):
        monkeypatch.setattr(evaluator, "usable_cpus", lambda cpus=cpus: cpus)
        assert cli.main(["eval", "x.pt", *flag]) == 2
        assert seen[-1] == expected


class FakePredictor:
    """What evaluate_checkpoint reads of a Predictor before it evaluates."""

    meta = {"classes": ["a", "b"], "dataset": "toy"}
    ckpt: dict = {}
    instance_method = type("Method", (), {"enabled": False})()
    model = device = amp = inference = crf_args = crf = None


def test_predict_refuses_huge_indices_and_colours_out_of_range_in_one_line(tmp_path, capsys):
    """--foreground of over 4300 digits: int() raised ValueError, a traceback; replace=rgb(300,0,0) wrapped to
    (44,0,0) silently."""
    from pixelwise.cli import main
    from pixelwise.config import load_config
    from pixelwise.engine import train

    from .test_engine import toy_config

    root = write_dataset(tmp_path / "data").parent
    train(load_config(toy_config(tmp_path, iters=2, eval_interval=2)), run_dir=tmp_path / "run", data_root=root)
    image = sorted((root / "toy/images/val").glob("*.png"))[0]
    capsys.readouterr()  # (training's)
    base = ["predict", str(tmp_path / "run/best.pt"), str(image), "--out", str(tmp_path / "out"), "--effect"]
    assert main([*base, "blur", "--foreground", "1" * 4400]) == 2
    assert capsys.readouterr().err.strip() == (
        f"pixelwise predict: error: --foreground '{'1' * 4400}': no such class; the model's classes are 0 c0, 1 c1, "
        "2 c2"
    )
    assert main([*base, "replace=rgb(300,0,0)", "--foreground", "c1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "pixelwise predict: error: --effect replace=rgb(300,0,0): no such image file, and not a colour (e.g. #00b140, "
        "green, 0,177,64; each channel 0 to 255)"
    )
    assert not (tmp_path / "out").exists()


def _unwritable_folder():
    """A folder no one can create a file in, root included (sysfs refuses new files), or None."""
    folder = "/sys/kernel"
    if not os.path.isdir(folder):
        return None
    try:
        os.close(os.open(os.path.join(folder, ".pixelwise-probe.tmp"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError:
        return folder
    os.unlink(os.path.join(folder, ".pixelwise-probe.tmp"))
    return None


def test_eval_refuses_an_output_in_a_folder_it_cannot_write_before_any_work(tmp_path, capsys):
    """``eval --json /sys/kernel/x.json`` ran the whole evaluation, then failed naming its temporary file: as root
    os.access says yes to any folder, so the folder is now tried by creating (and removing) a file in it."""
    from pixelwise.cli import main

    folder = _unwritable_folder()
    if folder is None:
        pytest.skip("no folder here refuses new files to this user")
    missing = tmp_path / "none.pt"  # refused before the checkpoint is even read
    for flag, name in (("--json", "x.json"), ("--confusion", "x.png")):
        target = os.path.join(folder, name)
        assert main(["eval", str(missing), flag, target]) == 2
        assert capsys.readouterr().err.strip() == (
            f"pixelwise eval: error: {flag} {target}: cannot write in {folder} (Permission denied); choose another "
            "place, or make it writable"
        )
    assert not [p for p in os.listdir(folder) if p.endswith(".tmp")]


def test_check_output_file_tries_the_folder_not_its_mode_bits(tmp_path, monkeypatch):
    """A folder whose mode bits allow writing (as they do root) but that refuses new files (NFS with root_squash,
    sysfs): refused before any work, naming the file; a folder still to be made is tried in its
    nearest existing parent, which is left as it was."""
    import pixelwise.fileio as fileio

    locked = tmp_path / "locked"
    locked.mkdir()
    real_open = os.open

    def refusing(path, flags, *args, **kwargs):
        if os.path.dirname(os.fspath(path)) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(fileio.os, "open", refusing)
    for target in (locked / "m.json", locked / "new" / "deeper" / "m.json"):
        with pytest.raises(ConfigError) as e:
            fileio.check_output_file(target, "--json", overwrite=False)
        assert str(e.value) == (
            f"--json {target}: cannot write in {locked} (Permission denied); choose another place, or make it writable"
        )
    fileio.check_output_file(tmp_path / "fine" / "m.json", "--json", overwrite=False)  # writable: no error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked"]
    assert not list(locked.iterdir())


def test_a_failed_atomic_write_names_its_target_not_the_temporary_file(tmp_path):
    """The error named ``.x.json.308f5311.tmp``, a file the user never asked for and that is gone by then."""
    from pixelwise.fileio import atomic_write_text

    target = tmp_path / "x.json"
    target.mkdir()
    (target / "inside").write_text("keep")  # a non-empty folder where the file goes: the rename fails
    with pytest.raises(OSError) as e:
        atomic_write_text(target, "{}")
    assert e.value.filename == str(target), e.value
    assert str(target) in str(e.value) and ".tmp" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
    folder = _unwritable_folder()
    if folder is not None:  # the temporary file itself cannot be made
        with pytest.raises(OSError) as e:
            atomic_write_text(os.path.join(folder, "x.json"), "{}")
        assert e.value.filename == os.path.join(folder, "x.json"), e.value
