"""Dense CRF post-processing wired into eval/predict, and the CRF parameter search."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pixelwise.cli import main
from pixelwise.config import load_config
from pixelwise.crf import CRFSettings, rgb_uint8, settings_for
from pixelwise.engine import evaluate_checkpoint, train
from pixelwise.errors import ConfigError

from .conftest import write_dataset


def test_rgb_recovered_exactly_from_the_normalised_input():
    rgb = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    mean, std = [0.41, 0.42, 0.43], [0.3, 0.31, 0.32]
    x = (rgb.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.equal(rgb_uint8(x, mean, std), rgb.permute(0, 2, 3, 1))
    gray = torch.randint(0, 256, (1, 1, 4, 4), dtype=torch.uint8)
    out = rgb_uint8((gray.float() / 255 - 0.5) / 0.2, [0.5], [0.2])
    assert out.shape == (1, 4, 4, 3) and torch.equal(out[..., 1], gray[:, 0])


def test_settings_precedence(tmp_path):
    ckpt = tmp_path / "best.pt"
    assert settings_for(ckpt, None) == CRFSettings()
    assert settings_for(ckpt, {"w1": 2.0}).w1 == 2.0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"crf": {"w1": 6.0, "theta_beta": 7.0}}))
    s = settings_for(ckpt, {"w1": 2.0, "theta_alpha": 11.0}, {"theta_beta": 9.0, "w2": None})
    assert (s.w1, s.theta_alpha, s.theta_beta, s.w2) == (6.0, 11.0, 9.0, CRFSettings().w2)
    with pytest.raises(ConfigError, match="valid: iterations, w1"):
        CRFSettings.from_dict({"w3": 1})
    (tmp_path / "config.yaml").write_text("crf: [1, 2\n")  # a hand-edited config beside the checkpoint
    with pytest.raises(ConfigError) as e:
        settings_for(ckpt, None)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'config.yaml'}: not valid YAML (") and message.endswith("move it away")
    (tmp_path / "config.yaml").write_text("crf: 5\n")
    with pytest.raises(ConfigError) as e:
        settings_for(ckpt, None)
    assert str(e.value) == f"{tmp_path / 'config.yaml'}: its crf section is 5, not a mapping of CRF parameters"


@pytest.fixture(scope="module")
def _trained_toy(tmp_path_factory):
    """The toy U-Net trained once for the module (40 iterations); each test gets its own copy (toy_checkpoint)."""
    tmp_path = tmp_path_factory.mktemp("refine_toy")
    root = write_dataset(tmp_path / "data", splits={"train": 4, "val": 3}, size=(40, 30)).parent
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "unet", "base_channels": 4, "depth": 2},
                "data": {"dataset": "toy", "crop_size": 24, "batch_size": 2, "num_workers": 0},
                "train": {"iters": 40, "eval_interval": 40, "lr": 0.02, "optimizer": "adamw"},
                "crf": {"iterations": 3},
            }
        )
    )
    train(load_config(cfg), run_dir=tmp_path / "run", data_root=root, progress=False)
    return tmp_path


@pytest.fixture
def toy_checkpoint(_trained_toy, tmp_path):
    """``(best.pt, data root)`` of a copy of the trained run and its data in this test's folder: crf-search
    writes into its run's folder, and a test may make it read-only."""
    for name in ("data", "run"):
        shutil.copytree(_trained_toy / name, tmp_path / name)
    return tmp_path / "run/best.pt", tmp_path / "data"


def test_eval_with_crf_and_crf_search(toy_checkpoint, capsys):
    ckpt, root = toy_checkpoint
    plain = evaluate_checkpoint(ckpt, data_root=root, num_workers=0, progress=False)["metrics"]
    refined = evaluate_checkpoint(
        ckpt,
        data_root=root,
        num_workers=0,
        progress=False,
        crf=CRFSettings(iterations=3, w1=10.0, theta_alpha=5.0, theta_beta=3.0),
    )["metrics"]
    assert refined["crf"]["w1"] == 10.0 and "crf" not in plain
    assert refined["confusion_matrix"] != plain["confusion_matrix"]  # the CRF changed predictions
    assert sum(map(sum, refined["confusion_matrix"])) == sum(map(sum, plain["confusion_matrix"]))

    search = "--num-images 2 --w1 1 8 --theta-alpha 5 --theta-beta 3 9 --iterations 2 --no-progress".split()
    assert main(["crf-search", str(ckpt), *search, "--data-root", str(root)]) == 0
    result = json.loads((ckpt.parent / "crf_search.json").read_text())
    assert len(result["results"]) == 4 and result["num_images"] == 2
    assert result["image_indices"] == [0, 2]  # the first and the last of the 3 val images, not the first two
    best = max(result["results"], key=lambda r: r["miou"])
    written = yaml.safe_load((ckpt.parent / "config.yaml").read_text())["crf"]
    assert written == {k: best[k] for k in ("iterations", "w1", "theta_alpha", "theta_beta", "w2", "theta_gamma")}
    assert "mIoU" in capsys.readouterr().out
    # eval --crf now uses what the search wrote (here checked through the JSON it writes)
    assert (
        main(
            [
                "eval",
                str(ckpt),
                "--crf",
                "--data-root",
                str(root),
                "--num-workers",
                "0",
                "--no-progress",
                "--json",
                str(ckpt.parent / "e.json"),
            ]
        )
        == 0
    )
    assert json.loads((ckpt.parent / "e.json").read_text())["metrics"]["crf"] == written


def test_crf_search_takes_the_protocol_flags_over_the_runs(toy_checkpoint):
    """crf-search scores the network as eval does under the same flags: its no-CRF mIoU on the whole val split
    equals eval's, with the run's protocol and with --scales/--flip over it."""
    ckpt, root = toy_checkpoint
    common = ["--num-images", "3", "--w1", "1", "--theta-alpha", "5", "--theta-beta", "3", "--iterations", "1"]
    seen = []
    for flags, override in (([], None), (["--scales", "0.5", "--flip"], {"scales": [0.5], "flip": True})):
        assert (
            main(["crf-search", str(ckpt), *common, *flags, "--amp", "none", "--data-root", str(root), "--no-progress"])
            == 0
        )
        result = json.loads((ckpt.parent / "crf_search.json").read_text())
        metrics = evaluate_checkpoint(ckpt, data_root=root, num_workers=0, progress=False, inference=override)
        assert result["inference"] == metrics["inference"]
        assert result["no_crf_miou"] == pytest.approx(metrics["metrics"]["miou"])
        seen.append(result["no_crf_miou"])
    assert seen[0] != seen[1]  # the flags changed what the network predicts


def test_data_set_with_another_class_count_is_refused(toy_checkpoint, tmp_path, capsys):
    ckpt, _ = toy_checkpoint
    other = write_dataset(tmp_path / "other", splits={"val": 1}, num_classes=4).parent
    for command in (["eval", str(ckpt)], ["crf-search", str(ckpt), "--num-images", "1"]):
        assert main([*command, "--data-root", str(other), "--no-progress"]) == 2
        assert "is for 3 classes but data set 'toy'" in capsys.readouterr().err


def test_predict_with_crf(toy_checkpoint, tmp_path):
    ckpt, root = toy_checkpoint
    images = sorted(str(p) for p in (root / "toy/images/val").glob("*.png"))
    assert (
        main(
            [
                "predict",
                str(ckpt),
                *images,
                "--out",
                str(tmp_path / "p"),
                "--crf",
                "--crf-iterations",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    mask = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "p/masks/s00.png"))
    assert mask.shape == (30, 40) and mask.max() < 3


def test_predict_with_crf_too_large_for_memory(toy_checkpoint, tmp_path, monkeypatch, capsys):
    """An image whose dense CRF cannot fit in the free memory stops with one line naming it (not a kill by the
    kernel part-way through); with --skip-errors the other images are written and it is listed."""
    dense_crf_module = sys.modules["pixelwise.crf.mean_field"]

    ckpt, root = toy_checkpoint
    images = sorted(str(p) for p in (root / "toy/images/val").glob("*.png"))
    # 30x40 images need at least 1200 x 640 bytes: leave less than that free
    monkeypatch.setattr(dense_crf_module, "available_memory", lambda device: 2**19)
    out = tmp_path / "p"
    assert main(["predict", str(ckpt), images[0], "--out", str(out), "--crf", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"pixelwise predict: error: {images[0]}: dense CRF on 1 image(s) of 40x30 with 3 classes: needs at least "
        "1 MiB of memory, 0 MiB are free; refine smaller (downscaled) images, fewer at a time, or leave the CRF off"
    )
    assert (
        main(
            ["predict", str(ckpt), *images, "--out", str(out), "--crf", "--skip-errors", "--no-progress", "--overwrite"]
        )
        == 2
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert [Path(f["image"]).name for f in manifest["failed"]] == [Path(p).name for p in images]
    monkeypatch.setattr(dense_crf_module, "available_memory", lambda device: 40 * 30 * 640)
    assert main(["predict", str(ckpt), images[0], "--out", str(out), "--crf", "--no-progress", "--overwrite"]) == 0


def test_crf_search_keeps_a_read_only_run_config_and_takes_numpy_grids(toy_checkpoint, capsys):
    """A config.yaml made read-only was replaced (a temporary renamed over it) after the whole search; a grid of
    numpy numbers (np.linspace) passed the checks and failed to be written at the end."""
    import numpy as np

    from pixelwise.engine import crf_search

    ckpt, root = toy_checkpoint
    config = ckpt.parent / "config.yaml"
    before = config.read_text()
    config.chmod(0o444)
    try:
        assert main(["crf-search", str(ckpt), "--data-root", str(root), "--no-progress", "--num-images", "1"]) == 2
        assert capsys.readouterr().err.strip() == (
            f"pixelwise crf-search: error: {config} is read-only, and crf-search writes its best settings there: "
            "make it writable, or search without writing (crf_search(..., write=False))"
        )
        assert config.read_text() == before and not config.stat().st_mode & 0o200
    finally:
        config.chmod(0o644)
    result = crf_search(
        ckpt, data_root=root, num_images=1, iterations=1, grid={"w1": np.linspace(3, 5, 2)}, progress=False
    )
    assert type(result["best"]["w1"]) is float
    assert json.loads((ckpt.parent / "crf_search.json").read_text())["best"] == result["best"]


def test_crf_search_tries_the_run_folder_before_the_search(tmp_path, monkeypatch):
    """A run folder no file can be created in (root on a read-only or root-squashed mount, where os.access says
    yes) was found when the results were written, after the whole search: a file is tried there first."""
    import os

    import pixelwise.fileio as fileio
    from pixelwise.crf.search import check_run_config_writable

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "unet"}, "data": {"dataset": "toy"}}))
    real_open = os.open

    def refusing(path, flags, *args, **kwargs):
        if os.path.dirname(os.fspath(path)) == str(run) and flags & os.O_CREAT:
            raise OSError(30, "Read-only file system", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    check_run_config_writable(run / "config.yaml")  # writable: no error
    monkeypatch.setattr(fileio.os, "open", refusing)
    with pytest.raises(ConfigError) as e:
        check_run_config_writable(run / "config.yaml")
    assert str(e.value) == (
        f"cannot write in {run} (Read-only file system), where crf-search writes its results: make it writable"
    )
    assert sorted(q.name for q in run.iterdir()) == ["config.yaml"]


def test_crf_search_bad_inputs_stop_before_anything_is_written(toy_checkpoint, capsys):
    ckpt, root = toy_checkpoint
    before = (ckpt.parent / "config.yaml").read_text()
    for flags, message in [
        # no images: every mIoU was NaN and the first grid point was written into the run's config
        (["--num-images", "0"], "--num-images 0: must be >= 1 (the images the settings are scored on)"),
        (["--w1", "-1"], "crf.w1=-1.0: must be a number from 0 (kernel off) to 3.4e+38"),
        (
            ["--theta-alpha", "nan"],
            "crf.theta_alpha=nan: must be a number from 0.01 to 3.4e+38 (pixels, or intensity levels)",
        ),
    ]:
        assert main(["crf-search", str(ckpt), *flags, "--data-root", str(root), "--no-progress"]) == 2
        assert capsys.readouterr().err.strip().endswith(message)
    assert (ckpt.parent / "config.yaml").read_text() == before and not (ckpt.parent / "crf_search.json").exists()


def test_crf_search_checks_where_its_results_go_before_searching(toy_checkpoint):
    """A folder named crf_search.json failed the search at its end after config.yaml had taken the new settings;
    a config.yaml that holds no mapping was found at the end too (the search's time lost); a config.yaml that is
    a link was replaced by a file (the file it named kept the old settings); --w1 5 5 scored the same settings
    twice."""
    from pixelwise.engine import crf_search
    from pixelwise.errors import ConfigError

    ckpt, root = toy_checkpoint
    config = ckpt.parent / "config.yaml"
    before = config.read_text()
    (ckpt.parent / "crf_search.json").mkdir()
    with pytest.raises(ConfigError) as e:
        crf_search(ckpt, data_root=root, num_images=1, iterations=1, grid={"w1": [3.0]}, progress=False)
    assert str(e.value) == (
        f"crf-search's results {ckpt.parent / 'crf_search.json'} is a folder: move it away: they go there"
    )
    assert config.read_text() == before
    (ckpt.parent / "crf_search.json").rmdir()
    config.write_text("- a\n")
    with pytest.raises(ConfigError) as e:
        crf_search(ckpt, data_root=root, num_images=1, iterations=1, grid={"w1": [3.0]}, progress=False)
    assert str(e.value) == f"{config} does not hold a config (a mapping of sections): fix it or move it away"
    real = ckpt.parent / "real.yaml"
    real.write_text(before)
    config.unlink()
    config.symlink_to(real.name)
    result = crf_search(ckpt, data_root=root, num_images=1, iterations=1, grid={"w1": [5.0, 5.0]}, progress=False)
    assert len(result["results"]) == 1
    assert config.is_symlink() and yaml.safe_load(real.read_text())["crf"]["w1"] == 5.0
    config.unlink()
    config.symlink_to(config.name)  # a link to itself: one line before the search, not a traceback after it
    with pytest.raises(ConfigError) as e:
        crf_search(ckpt, data_root=root, num_images=1, iterations=1, grid={"w1": [3.0]}, progress=False)
    assert str(e.value) == f"{config} is a link that leads back to itself: put the run's config there"


def test_crf_search_keeps_the_runs_smoothness_kernel_and_needs_labelled_pixels():
    """The default grid fixed w2 = 3 and theta_gamma = 3, so a search replaced the run's own (the defaults' 1) in
    its config.yaml; an all-ignore split gave NaN everywhere and the first grid point was written as the best."""
    from pixelwise.crf.search import grid_search
    from pixelwise.crf.settings import DEFAULT_GRID

    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(1, 2, 6, 7), 1)
    image = torch.randn(1, 3, 6, 7)
    labels = (torch.rand(1, 6, 7) > 0.5).long()
    base = CRFSettings(iterations=1, w2=5.0, theta_gamma=2.0)
    common = {"num_classes": 2, "ignore_index": 255, "mean": [0.5] * 3, "std": [0.25] * 3, "progress": False}
    result = grid_search([(probs, image, labels)], grid=DEFAULT_GRID, base=base, **common)
    assert {(r["w2"], r["theta_gamma"]) for r in result["results"]} == {(5.0, 2.0)}
    assert (result["best"]["w2"], result["best"]["theta_gamma"]) == (5.0, 2.0) and len(result["results"]) == 36
    with pytest.raises(ConfigError) as e:
        grid_search([(probs, image, torch.full_like(labels, 255))], grid={"w1": [1.0, 2.0]}, base=base, **common)
    assert str(e.value) == (
        "no labelled pixel in the 1 image(s) searched (every mIoU is undefined): search another split, or more images"
    )


def test_spread_indices_cover_the_split_evenly():
    from pixelwise.engine.crf_search import spread_indices

    assert spread_indices(101, 20)[:3] == [0, 5, 11] and spread_indices(101, 20)[-1] == 100
    assert len(set(spread_indices(101, 20))) == 20
    assert spread_indices(4, 3) == [0, 2, 3]  # 1.5 rounds to 2 (half to even), still three distinct images
    assert spread_indices(3, 20) == [0, 1, 2] and spread_indices(7, 1) == [0]
    for length in range(1, 40):
        for count in range(1, length + 1):
            got = spread_indices(length, count)
            assert len(set(got)) == count and got[0] == 0 and (count == 1 or got[-1] == length - 1)


@pytest.mark.parametrize(
    "layout, files, expected",
    [
        ("0::/job\n", {"job/memory.max": "1000000", "job/memory.current": "250000"}, 750000),  # cgroup v2
        ("0::/job\n", {"job/memory.max": "max", "job/memory.current": "5"}, None),
        ("0::/job\n", {"memory.max": "4000", "memory.current": "1000"}, 3000),  # a container: the mount's root
        (  # cgroup v1, no limit written as a huge number, then a limit
            "4:memory:/job\n0::/\n",
            {"memory/job/memory.limit_in_bytes": str(2**63 - 4096), "memory/job/memory.usage_in_bytes": "7"},
            None,
        ),
        ("4:memory:/job\n", {"memory/memory.limit_in_bytes": "2048", "memory/memory.usage_in_bytes": "48"}, 2000),
        ("garbage\n", {}, None),
    ],
)
def test_memory_left_by_the_control_group(tmp_path, layout, files, expected):
    """The CRF's (and prediction's) memory checks see a container's limit, which MemAvailable does not show."""
    from pixelwise.device import _cgroup_headroom

    (tmp_path / "cgroup").write_text(layout)
    for name, text in files.items():
        (tmp_path / "fs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / name).write_text(text)
    assert _cgroup_headroom(str(tmp_path / "fs"), str(tmp_path / "cgroup")) == expected


def test_crf_memory_check_only_where_the_lattice_is_built(monkeypatch):
    """No mean-field step, or no appearance kernel: nothing large is allocated, nothing refused."""
    from pixelwise.crf import dense_crf
    from pixelwise.errors import ResourceError

    monkeypatch.setattr(sys.modules["pixelwise.crf.mean_field"], "available_memory", lambda device: 0)
    image, probs = torch.zeros(6, 5, 3, dtype=torch.uint8), torch.full((2, 6, 5), 0.5)
    assert torch.allclose(dense_crf(image, probs, iterations=0), probs)
    dense_crf(image, probs, w1=0.0)
    with pytest.raises(ResourceError, match="fewer at a time, or leave the CRF off"):
        dense_crf(image, probs)
