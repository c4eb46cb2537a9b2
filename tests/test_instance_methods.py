"""The instance methods end to end: each method's training targets, its decoding on hand-made outputs, and a
short training, evaluation (the AP/PQ table and its JSON) and prediction (16-bit instance maps, overlays)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pixelwise.config import load_config
from pixelwise.engine import crf_search, evaluate_checkpoint, predict, train
from pixelwise.engine.instance_methods import TargetBuilder, build_loss, decode
from pixelwise.errors import ConfigError
from pixelwise.inference import InstanceSettings
from pixelwise.losses import build_loss as make_loss

from .test_cli import run_cli
from .test_instance_data import instance_dataset

THRESHOLDS = ["0.50", "0.55", "0.60", "0.65", "0.70", "0.75", "0.80", "0.85", "0.90"]


def two_touching_squares() -> torch.Tensor:
    inst = torch.zeros(12, 20, dtype=torch.int64)
    inst[2:10, 2:10] = 7  # two 8x8 squares side by side, touching along x = 9|10
    inst[2:10, 10:18] = 300
    return inst


def test_boundary_targets_separate_touching_objects():
    inst = two_touching_squares()
    mask = (inst > 0).long()
    mask[0, 0] = 255
    target = TargetBuilder(InstanceSettings(method="boundary", boundary_width=1), 2, 255)(mask, inst)
    assert target[0, 0] == 255 and target[1, 1] == 0  # ignore kept, background 0
    assert (target[2:10, 9:11] == 2).all()  # the contact: one boundary pixel on each side
    assert (target[4:8, 4:8] == 1).all() and (target[4:8, 12:16] == 1).all()  # interiors keep the class
    assert (target[2, 2:18] == 2).all()  # outer edges are boundary too


def test_panoptic_targets_through_the_builder():
    inst = two_touching_squares()
    target = TargetBuilder(InstanceSettings(method="panoptic", center_sigma=2.0), 2, 255)((inst > 0).long(), inst)
    assert set(target) == {"mask", "center", "center_weights", "offset", "offset_weights"}
    assert target["center"].shape == (1, 12, 20) and target["offset"].shape == (2, 12, 20)
    # each pixel + its offset = its square's centre of mass (5.5, 5.5) or (5.5, 13.5)
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(20.0), indexing="ij")
    assert torch.allclose((ys + target["offset"][0])[inst == 7], torch.tensor(5.5))
    assert torch.allclose((xs + target["offset"][1])[inst == 300], torch.tensor(13.5))


def test_small_instance_weights_and_per_radius_sigma_through_the_builder():
    inst = two_touching_squares()  # two 8x8 squares (64 px each)
    inst[0, 0] = 9  # and a one-pixel instance
    mask = (inst > 0).long()
    plain = TargetBuilder(InstanceSettings(method="panoptic", center_sigma=4.0), 2, 255)(mask, inst)
    settings = InstanceSettings(
        method="panoptic",
        center_sigma=4.0,
        center_sigma_per_radius=0.5,
        small_instance_area=10,
        small_instance_weight=3.0,
    )
    target = TargetBuilder(settings, 2, 255)(mask, inst)
    assert set(target) == set(plain) | {"semantic_weights"}
    assert target["semantic_weights"][0, 0] == 3 and (target["semantic_weights"][inst != 9] == 1).all()
    # std 0.5 x sqrt(64 / pi) = 2.26 px instead of 4: midway between the peaks (6, 6) and (6, 14) (the centres
    # (5.5, 5.5) and (5.5, 13.5) rounded half to even), 4 px from each, the heatmap falls to 0.21 instead of 0.61
    std = 0.5 * math.sqrt(64 / math.pi)
    assert target["center"][0, 6, 10].item() == pytest.approx(math.exp(-16 / (2 * std**2)), rel=1e-5)
    assert plain["center"][0, 6, 10].item() == pytest.approx(math.exp(-16 / 32), rel=1e-5)
    assert torch.equal(target["offset"], plain["offset"]) and torch.equal(target["mask"], plain["mask"])
    # weight 1 (or area 0) adds no map: batches stay as they were
    assert "semantic_weights" not in TargetBuilder(
        InstanceSettings(method="panoptic", small_instance_area=10, small_instance_weight=1.0), 2, 255
    )(mask, inst)


def test_small_instance_weights_need_a_semantic_loss_that_weighs_pixels():
    settings = InstanceSettings(method="panoptic", small_instance_area=100, small_instance_weight=3.0)
    with pytest.raises(ConfigError) as e:
        build_loss(settings, make_loss("focal"))
    assert str(e.value) == (
        "instances.small_instance_weight=3.0 weighs pixels of the semantic loss, which FocalLoss cannot: use "
        "train.loss: cross_entropy, or small_instance_weight: 1"
    )
    build_loss(settings, make_loss("cross_entropy"))  # accepted


def logits_of(classes: np.ndarray, num: int) -> torch.Tensor:
    """Logits whose argmax is ``classes`` (1 x num x H x W)."""
    return torch.nn.functional.one_hot(torch.from_numpy(classes), num).permute(2, 0, 1)[None].float() * 10


def test_connected_components_merge_touching_objects_and_boundaries_split_them():
    inst = two_touching_squares().numpy()
    semantic = (inst > 0).astype(np.int64)
    cc = decode(InstanceSettings(method="connected_components"), logits_of(semantic, 2), 2, [1])[0]
    assert cc.instances.max() == 1 and cc.classes.tolist() == [1]  # the two squares merge
    three = TargetBuilder(InstanceSettings(method="boundary", boundary_width=1), 2, 255)(
        torch.from_numpy(semantic), torch.from_numpy(inst)
    ).numpy()
    out = decode(InstanceSettings(method="boundary"), logits_of(three, 3), 2, [1])[0]
    assert out.instances.max() == 2 and out.classes.tolist() == [1, 1]
    for true_id in (7, 300):  # each square recovered exactly
        ids = np.unique(out.instances[inst == true_id])
        assert ids.size == 1 and ids[0] > 0 and (out.instances == ids[0]).sum() == (inst == true_id).sum()
    np.testing.assert_array_equal(out.semantic, semantic)  # boundary pixels take their instance's class
    assert np.all(out.scores > 0.99)


def test_panoptic_decoding_takes_a_top_k_of_a_thousand_and_more():
    """Nuclei images hold hundreds of objects: --top-k 1000 stopped decoding with the panoptic map's id rule
    (top_k below label_divisor 1000), a map decoding does not use. 1200 centres give 1200 instances."""
    side = 4 * 40
    output = {
        "out": logits_of(np.ones((side, side), np.int64), 2),
        "center": torch.zeros(1, 1, side, side),
        "offset": torch.zeros(1, 2, side, side),
    }
    output["center"][0, 0, 2::4, 2::4] = 1.0  # 40 x 40 = 1600 peaks, each its own 4 x 4 cell
    for top_k in (1000, 1200):
        found = decode(InstanceSettings(method="panoptic", top_k=top_k), output, 2, [1])[0]
        assert found.instances.max() == top_k and len(found.classes) == top_k


def test_instances_config_section():
    with pytest.raises(ConfigError) as e:
        InstanceSettings.from_dict({"method": "mask_rcnn"})
    assert str(e.value) == "instances.method='mask_rcnn'; valid: none, connected_components, boundary, panoptic"
    with pytest.raises(ConfigError) as e:
        InstanceSettings.from_dict({"method": "panoptic", "center_sigma_per_radius": 0})
    assert str(e.value) == (
        "instances.center_sigma_per_radius=0: must be > 0, or null for one center_sigma for all instances"
    )
    with pytest.raises(ConfigError) as e:
        InstanceSettings.from_dict({"method": "panoptic", "nms_kernel": 8})
    assert str(e.value) == "instances.nms_kernel=8: must be odd (e.g. 9)"
    # NaN and out-of-range weights and thresholds used to pass and train or decode silently wrong
    nan = float("nan")
    for values, message in [
        ({"center_sigma": nan}, "instances.center_sigma=nan: must be a finite number > 0"),
        ({"center_sigma": float("inf")}, "instances.center_sigma=inf: must be a finite number > 0"),
        ({"center_weight": -1.0}, "instances.center_weight=-1.0: must be a finite number >= 0"),
        ({"offset_weight": nan}, "instances.offset_weight=nan: must be a finite number >= 0"),
        ({"center_threshold": float("inf")}, "instances.center_threshold=inf: must be a finite number"),
        ({"min_size": -1}, "instances.min_size=-1: must be >= 0 pixels (0 keeps every instance)"),
    ]:
        with pytest.raises(ConfigError) as e:
            InstanceSettings.from_dict({"method": "panoptic", **values})
        assert str(e.value) == message
    for bad in (True, "0.5"):  # null by default, so the config's type check does not see these
        with pytest.raises(ConfigError) as e:
            InstanceSettings.from_dict({"method": "panoptic", "center_sigma_per_radius": bad})
        assert str(e.value) == f"instances.center_sigma_per_radius={bad!r}: must be a number (e.g. 0.5), or null"
    assert InstanceSettings.from_dict({"center_sigma_per_radius": 1}).center_sigma_per_radius == 1
    with pytest.raises(ConfigError) as e:
        InstanceSettings.from_dict({"small_instance_area": -1, "small_instance_weight": 3})
    assert str(e.value) == (
        "instances.small_instance_area=-1, small_instance_weight=3: the area must be >= 0 pixels and the weight a "
        "finite number > 0"
    )
    with pytest.raises(ConfigError) as e:
        InstanceSettings.from_dict({"small_instance_weight": 3})
    assert str(e.value) == (
        "instances.small_instance_weight=3 needs instances.small_instance_area: the pixel count under which an "
        "instance is small (e.g. 128)"
    )
    with pytest.raises(ConfigError) as e:
        InstanceSettings.from_dict({"sigma": 3})
    assert str(e.value).startswith("unknown config key(s) sigma; valid: instances.method, instances.boundary_width")


def instance_config(tmp_path, method: str, **instances) -> dict:
    path = tmp_path / f"{method}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "unet", "base_channels": 4, "depth": 2},
                "data": {"dataset": "toy", "crop_size": 32, "batch_size": 2, "num_workers": 0, "elastic_p": 0.5},
                "train": {"iters": 2, "eval_interval": 2, "lr": 0.01},
                "instances": {"method": method, "boundary_width": 1, "center_sigma": 2.0, **instances},
            }
        )
    )
    return load_config(path)


@pytest.mark.parametrize("method", ["boundary", "panoptic", "connected_components"])
def test_train_eval_predict_each_method(method, tmp_path):
    data = tmp_path / "data"
    instance_dataset(data, splits={"train": 3, "val": 2})
    run = tmp_path / "run"
    result = train(instance_config(tmp_path, method), run_dir=run, data_root=data, progress=False)
    assert result["best_metric"] == "mean_ap"
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["meta"]["instances"]["method"] == method and ckpt["meta"]["thing_classes"] == [1]
    assert ckpt["meta"]["model"]["num_classes"] == (3 if method == "boundary" else 2)
    assert ckpt["meta"]["classes"] == ["c0", "c1"]
    scores = evaluate_checkpoint(run / "best.pt", progress=False)["metrics"]["instances"]
    assert scores["method"] == method and list(scores["ap"]) == THRESHOLDS
    assert scores["num_true"] == sum(
        np.count_nonzero(np.unique(np.asarray(Image.open(p)))) for p in (data / "toy/instances/val").glob("*.png")
    )
    # test-time flips and turns, and decoding settings over the run's, for every instance method
    averaged = evaluate_checkpoint(run / "best.pt", progress=False, inference={"flip": True, "rot90": True})
    assert averaged["metrics"]["instances"]["num_true"] == scores["num_true"]
    assert averaged["inference"]["flip"] and averaged["inference"]["rot90"]
    huge = evaluate_checkpoint(run / "best.pt", progress=False, decoding={"min_size": 10**6})
    assert huge["decoding"]["min_size"] == 10**6 and huge["metrics"]["instances"]["num_pred"] == 0
    if method == "panoptic":
        none = evaluate_checkpoint(run / "best.pt", progress=False, decoding={"center_threshold": 1e9})
        assert none["decoding"]["center_threshold"] == 1e9 and none["metrics"]["instances"]["num_pred"] == 0
    else:  # the centre settings were recorded as applied, and ignored
        for key in ("center_threshold", "top_k"):
            with pytest.raises(ConfigError) as e:
                evaluate_checkpoint(run / "best.pt", progress=False, decoding={key: 1})
            assert str(e.value) == (
                f"{run / 'best.pt'}: --{key.replace('_', '-')} applies to panoptic models (their centre heatmap), and "
                f"this one decodes instances by {method}: drop it"
            )
    with pytest.raises(
        ConfigError, match=r"^decoding setting\(s\) sigma; valid: center_threshold, nms_kernel, top_k, min_size$"
    ):
        evaluate_checkpoint(run / "best.pt", progress=False, decoding={"sigma": 1})
    if method == "panoptic":
        with pytest.raises(ConfigError, match=r"^instances.nms_kernel=4: must be odd \(e.g. 5\)$"):
            evaluate_checkpoint(run / "best.pt", progress=False, decoding={"nms_kernel": 4})
    # refused when the model is loaded, before any image is read (it was refused mid-evaluation, on the bar's line)
    from pixelwise.engine import Predictor

    with pytest.raises(ConfigError, match=r"^instance decoding runs on the whole image at scale 1 .* scales \[0.5\]"):
        Predictor(run / "best.pt", inference={"scales": [0.5]})
    # silently ignored before: the model's own instances were scored
    with pytest.raises(ConfigError, match=rf"^--instances/--watershed make .* \(instances.method={method}\): leave"):
        evaluate_checkpoint(run / "best.pt", progress=False, instances=1, watershed=True)
    with pytest.raises(
        ConfigError,
        match=rf"best.pt: the dense CRF refines a semantic model's scores, and this model decodes instances "
        rf"\(instances.method={method}\), which it would not change: drop --crf$",
    ):
        evaluate_checkpoint(run / "best.pt", progress=False, crf=True)
    with pytest.raises(ConfigError, match=r"best.pt: the dense CRF refines a semantic model's scores"):
        crf_search(run / "best.pt", num_images=1, progress=False, write=False)  # would tune what --crf refuses
    out = tmp_path / "out"
    written = predict(run / "best.pt", [data / "toy/images/val"], out, progress=False)
    for files in written:
        inst = Image.open(files["instances"])
        assert inst.mode.startswith("I;16") and inst.size == (48, 40)
        assert int(files["instance_count"]) == np.count_nonzero(np.unique(np.asarray(inst)))
        assert Image.open(files["instance_overlay"]).size == (48, 40)
    # an effect follows the decoded mask (a boundary model's outputs are not its classes): cut out where it says c1
    cut = predict(
        run / "best.pt", [data / "toy/images/val"], tmp_path / "cut", progress=False, effect="cutout", foreground="c1"
    )
    for files in cut:
        alpha = np.asarray(Image.open(files["effect"]))[..., 3]
        np.testing.assert_array_equal(alpha, 255 * (np.asarray(Image.open(files["masks"])) == 1))
    if method == "boundary":  # one output more than classes: video refuses it, before any image is written
        (tmp_path / "clip.mp4").write_bytes(b"")
        inputs = [data / "toy/images/val", tmp_path / "clip.mp4"]
        with pytest.raises(ConfigError, match=r"clip.mp4: video writes each frame's class labels, and this model's 3 "):
            predict(run / "best.pt", inputs, tmp_path / "mixed", progress=False)
        assert not [p for p in (tmp_path / "mixed").rglob("*") if p.is_file()]
    # a stack: the manifest lists every slice's pictures, the instance overlays' too
    page = Image.open(next((data / "toy/images/val").glob("*.png")))
    page.save(tmp_path / "stack.tif", save_all=True, append_images=[page])
    stack = predict(run / "best.pt", [tmp_path / "stack.tif"], tmp_path / "st", progress=False)[0]
    assert stack["slices"] == {
        sub: [str(tmp_path / f"st/{sub}/stack_z000{z}.png") for z in range(2)]
        for sub in ("color", "overlay", "instance_overlay")
    }
    # the manifest records the decoding used, overrides included
    predict(run / "best.pt", [data / "toy/images/val"], out, progress=False, overwrite=True, decoding={"min_size": 3})
    manifest = json.loads((out / "manifest.json").read_text())
    trained = InstanceSettings.from_dict(ckpt["meta"]["instances"]).decoding
    assert manifest["settings"]["decoding"] == {**trained, "min_size": 3}
    assert ("center_threshold" in trained) == (method == "panoptic")  # only what applies is recorded


def test_panoptic_training_with_small_instance_weights_and_narrow_centres(tmp_path):
    """The weight map travels through the loader's batches into the loss; the run records the settings."""
    data = tmp_path / "data"
    instance_dataset(data, splits={"train": 3, "val": 2})
    small = {"small_instance_area": 30, "small_instance_weight": 3.0, "center_sigma_per_radius": 0.5}
    run = tmp_path / "run"
    train(instance_config(tmp_path, "panoptic", **small), run_dir=run, data_root=data, progress=False)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert {k: ckpt["meta"]["instances"][k] for k in small} == small
    assert np.isfinite([json.loads(line).get("loss", 0) for line in (run / "metrics.jsonl").open()]).all()


def test_instances_from_a_class_train_and_evaluate_without_instance_maps(tmp_path):
    """ISBI-style data: no instances/ folder; the objects are the mask's class-1 components, for training (boundary
    targets) and for evaluation, where they are also the ground truth of V_rand."""
    from scipy import ndimage as ndi

    data = tmp_path / "data"
    instance_dataset(data, splits={"train": 3, "val": 2})
    for split in ("train", "val"):
        for path in (data / "toy/instances" / split).glob("*.png"):
            path.unlink()
        (data / "toy/instances" / split).rmdir()
    (data / "toy/instances").rmdir()
    run = tmp_path / "run"
    train(instance_config(tmp_path, "boundary", from_class="c1"), run_dir=run, data_root=data, progress=False)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["meta"]["instances"]["from_class"] == "c1"
    scores = evaluate_checkpoint(run / "best.pt", progress=False)["metrics"]["instances"]
    expected = sum(ndi.label(np.asarray(Image.open(p)) == 1)[1] for p in sorted((data / "toy/masks/val").glob("*.png")))
    assert scores["num_true"] == expected and 0.0 <= scores["v_rand"] <= 1.0
    with pytest.raises(ConfigError, match=r"instances.from_class='cells' is not a class of the data set"):
        train(instance_config(tmp_path, "boundary", from_class="cells"), run_dir=tmp_path / "r2", data_root=data)


def test_eval_cli_prints_the_ap_table_and_writes_the_instances_json(tmp_path):
    data = tmp_path / "data"
    instance_dataset(data, splits={"train": 3, "val": 2})
    run = tmp_path / "run"
    train(instance_config(tmp_path, "boundary"), run_dir=run, data_root=data, progress=False)
    proc = run_cli("eval", run / "best.pt", "--json", tmp_path / "m.json", "--no-progress", env_root=data)
    assert "IoU        0.50  0.55" in proc.stdout and "mean AP" in proc.stdout
    scores = json.loads((tmp_path / "m.json").read_text())["metrics"]["instances"]
    for key in ("ap", "precision", "recall", "f1"):
        assert list(scores[key]) == THRESHOLDS
    assert {"mean_ap", "pq", "sq", "rq"} <= set(scores)


@pytest.mark.realdata
def test_ground_truth_components_on_dsb2018_score_the_published_merge_loss(data_root):
    """The 4-connected components of the DSB2018 test set's own foreground lose touching nuclei: matched against
    the true instances they score AP 0.749 at IoU 0.5 and 0.611 at 0.9 (the figures issue 13 quotes)."""
    from scipy import ndimage as ndi

    from pixelwise.metrics import InstanceMetrics

    maps = sorted((data_root / "dsb2018/instances/test").glob("*.png"))
    if not maps:
        pytest.skip(f"no DSB2018 test instance maps under {data_root}")
    metrics = InstanceMetrics()
    for path in maps:
        truth = np.asarray(Image.open(path)).astype(np.int64)
        metrics.update(truth, ndi.label(truth > 0)[0])
    ap = metrics.compute()["ap"]
    assert len(maps) == 50
    assert round(ap["0.50"], 3) == 0.749 and round(ap["0.90"], 3) == 0.611


def test_onnx_export_carries_the_instance_branch_and_predicts_the_same_instances(tmp_path):
    pytest.importorskip("onnxruntime")
    from pixelwise.export import export_onnx

    data = tmp_path / "data"
    instance_dataset(data, splits={"train": 3, "val": 2})
    run = tmp_path / "run"
    # every local maximum of the (untrained) heatmap a centre, so that there are instances to compare
    train(instance_config(tmp_path, "panoptic", center_threshold=-1.0), run_dir=run, data_root=data, progress=False)
    report = export_onnx(run / "best.pt", tmp_path / "model.onnx", height=40, width=48)
    assert report["dynamic"] and report["max_abs_diff"]["relative"] < 1e-3
    assert report["outputs"] == ["logits", "center", "offset"]  # what the check compared (export prints them)
    import onnx

    assert [o.name for o in onnx.load(str(tmp_path / "model.onnx")).graph.output] == ["logits", "center", "offset"]
    images = [data / "toy/images/val"]
    by_torch = predict(run / "best.pt", images, tmp_path / "torch", progress=False)
    by_onnx = predict(tmp_path / "model.onnx", images, tmp_path / "onnx", backend="onnxruntime", progress=False)
    assert all(int(a["instance_count"]) > 1 for a in by_torch)
    for a, b in zip(by_torch, by_onnx, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(a["instances"])), np.asarray(Image.open(b["instances"])))


def test_connected_components_use_the_truth_s_connectivity_where_the_truth_is_components():
    """Two cells touching at a corner: where the true instances are a class's 4-connected components (ISBI's
    ``instances.from_class``, or no instance maps) a perfect semantic map scored AP 0.5 and PQ 0 (one 8-connected
    prediction for two cells); with a data set's own instance maps it stays the StarDist baseline's 8."""
    from pixelwise.data.instance_targets import class_components
    from pixelwise.metrics import InstanceMetrics

    mask = np.zeros((6, 6), np.int64)
    mask[0:3, 0:3] = 1
    mask[3:6, 3:6] = 1
    logits = torch.from_numpy(np.stack([mask == 0, mask == 1]).astype(np.float32) * 10)[None]
    truth = class_components(mask, 1)
    assert truth.max() == 2
    for settings, maps, found in (
        (InstanceSettings(method="connected_components", from_class=1), True, 2),
        (InstanceSettings(method="connected_components"), False, 2),
        (InstanceSettings(method="connected_components"), True, 1),
    ):
        (out,) = decode(settings, logits, 2, [1], instance_maps=maps)
        assert out.instances.max() == found
        if found == 2:
            metrics = InstanceMetrics()
            out.add_to(metrics, truth, mask)
            result = metrics.compute()
            assert result["ap"]["0.90"] == 1.0 and result["pq"] == 1.0
