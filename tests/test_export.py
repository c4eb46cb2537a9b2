"""ONNX export with onnxruntime, the onnxruntime prediction backend, batch-norm folding."""

import copy
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pixelwise import build_model
from pixelwise.engine import predict
from pixelwise.errors import CheckpointError, ConfigError, DataError, PixelwiseError
from pixelwise.inference import fold_batch_norm, optimize_for_inference
from pixelwise.models.weights import save_checkpoint

from .conftest import save_toy_checkpoint

pytest.importorskip("onnxruntime")


def randomise_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("name", ["unet_resnet18", "deeplabv3plus_mobilenetv2", "deeplabv3_resnet50"])
def test_fold_batch_norm_keeps_outputs(name):
    torch.manual_seed(0)
    model = randomise_bn(build_model(name, num_classes=4))
    reference = copy.deepcopy(model)
    folded = fold_batch_norm(model, torch.randn(1, 3, 64, 64))
    assert folded > 0 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, 97, 83)
    with torch.no_grad():
        ref = reference(x)
        assert (model(x) - ref).abs().max() <= 1e-5 * ref.abs().max().clamp(min=1)


def test_fold_refuses_a_norm_that_is_not_right_after_its_conv():
    class ConvAddNorm(nn.Module):  # conv output used twice: folding would change the skip
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = randomise_bn(ConvAddNorm())
    assert fold_batch_norm(model, torch.randn(1, 3, 8, 8)) == 0
    assert isinstance(model.bn, nn.BatchNorm2d)


def checkpoint(tmp_path, name, **kwargs):
    torch.manual_seed(0)
    model = randomise_bn(build_model(name, num_classes=3, **kwargs))
    return save_toy_checkpoint(tmp_path / f"{name}.pt", model, {"name": name, "num_classes": 3, **kwargs})


@pytest.mark.parametrize("name,kwargs", [("unet", {"base_channels": 8}), ("deeplabv3plus_mobilenetv2", {})])
def test_export_dynamic_and_onnxruntime_backend(tmp_path, name, kwargs):
    from pixelwise.export import export_onnx

    ckpt = checkpoint(tmp_path, name, **kwargs)
    report = export_onnx(ckpt, tmp_path / "m.onnx", height=96, width=128)
    assert report["dynamic"] and report["opset"] == 17
    assert set(report["max_abs_diff"]) == {"1x96x128", "2x83x135", "relative"}
    assert max(report["max_abs_diff"].values()) < 1e-4
    rng = np.random.default_rng(0)
    for i, size in enumerate([(70, 90), (101, 77)]):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    images = sorted(str(p) for p in tmp_path.glob("img*.png"))
    predict(ckpt, images, tmp_path / "torch", progress=False)
    predict(tmp_path / "m.onnx", images, tmp_path / "ort", progress=False)  # the suffix picks onnxruntime
    for i in range(2):
        a = np.asarray(Image.open(tmp_path / f"torch/masks/img{i}.png"))
        b = np.asarray(Image.open(tmp_path / f"ort/masks/img{i}.png"))
        assert (a == b).mean() > 0.999
    if name == "unet":  # an image under its total stride (16): the torch backend's one line, not onnxruntime's
        tiny = tmp_path / "tiny.png"
        Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tiny)
        with pytest.raises(DataError, match=rf"^image {tiny} is 5x5, smaller than model unet takes \(at least 16x16 "):
            predict(tmp_path / "m.onnx", [tiny], tmp_path / "ort_tiny", backend="onnxruntime", progress=False)


def test_export_never_leaves_an_unchecked_graph_nor_replaces_a_file_unasked(tmp_path, monkeypatch):
    import pixelwise.export as export
    from pixelwise.inference.onnx_backend import OnnxModel

    ckpt = checkpoint(tmp_path, "unet", base_channels=8)
    out = tmp_path / "models" / "m.onnx"
    export.export_onnx(ckpt, out, height=32, width=32, dynamic=False)
    first = out.read_bytes()
    with pytest.raises(PixelwiseError) as e:
        export.export_onnx(ckpt, out, height=32, width=32, dynamic=False)
    assert str(e.value) == f"--out {out} exists: pass --overwrite to replace it, or choose another file"

    def disagree(*args, **kwargs):
        raise RuntimeError("onnxruntime's outputs differ from PyTorch's")

    monkeypatch.setattr(export, "verify_onnx", disagree)
    failed = r"^ONNX export of unet at opset 17 failed: torchscript: RuntimeError: onnxruntime"
    with pytest.raises(PixelwiseError, match=failed):
        export.export_onnx(ckpt, out, height=32, width=32, dynamic=False, overwrite=True)
    assert out.read_bytes() == first  # the checked graph is still there, and nothing else
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"]
    monkeypatch.undo()
    report = export.export_onnx(ckpt, out, height=48, width=48, dynamic=False, overwrite=True)
    assert report["out"] == str(out) and OnnxModel(out).fixed_size == (48, 48)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"]
    # the external data file of a graph over 2 GB (as the exporter would write it) arrives beside the graph
    real_export = export._export

    def with_external_data(model, x, path, *args):
        real_export(model, x, path, *args)
        (path.parent / f"{path.name}.data").write_bytes(b"weights")

    monkeypatch.setattr(export, "_export", with_external_data)
    export.export_onnx(ckpt, out, height=32, width=32, dynamic=False, overwrite=True)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert (out.parent / "m.onnx.data").read_bytes() == b"weights"


def test_onnx_carries_the_crf_parameters_of_its_checkpoint(tmp_path):
    import yaml

    from pixelwise.engine import Predictor
    from pixelwise.export import export_onnx
    from pixelwise.models.weights import load_checkpoint

    ckpt = checkpoint(tmp_path, "unet", base_channels=8)
    trained = load_checkpoint(ckpt)
    save_checkpoint(ckpt, {**trained, "config": {"crf": {"w1": 7.0}}})  # the run's config
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"crf": {"theta_beta": 5.0}}))  # crf-search's, beside it
    out = tmp_path / "elsewhere" / "m.onnx"
    export_onnx(ckpt, out, height=32, width=32, dynamic=False)
    from_onnx = Predictor(out, backend="onnxruntime", crf=True).crf
    assert from_onnx == Predictor(ckpt, device="cpu", crf=True).crf
    assert (from_onnx.w1, from_onnx.theta_beta, from_onnx.theta_alpha) == (7.0, 5.0, 67.0)


def test_onnx_without_pixelwise_metadata_is_refused(tmp_path):
    from pixelwise.inference.onnx_backend import OnnxModel

    torch.onnx.export(nn.Conv2d(3, 2, 1), (torch.randn(1, 3, 4, 4),), str(tmp_path / "plain.onnx"), dynamo=False)
    with pytest.raises(CheckpointError, match="not exported by pixelwise"):
        OnnxModel(tmp_path / "plain.onnx")


def test_optimize_for_inference_channels_last():
    model = optimize_for_inference(randomise_bn(build_model("unet_resnet18", num_classes=2)))
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.training


def test_optimize_for_inference_half_precision_weights():
    """``dtype`` (eval/predict --amp on CUDA) stores the folded weights in half precision; under
    autocast the logits stay close to fp32's."""
    torch.manual_seed(0)
    model = randomise_bn(build_model("unet_resnet18", num_classes=2))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model.eval()(x)
    half = optimize_for_inference(copy.deepcopy(model), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = half(x.contiguous(memory_format=torch.channels_last)).float()
    assert (got - ref).norm() / ref.norm() < 3e-2


def test_fixed_size_onnx_resizes_any_input(tmp_path):
    """A graph exported at a fixed size (as PSPNet must be) still takes any batch and size: the input
    is resized to the export size and the logits back, as PyTorch would with the same resizing."""
    import torch.nn.functional as F

    from pixelwise.export import export_onnx
    from pixelwise.inference.onnx_backend import OnnxModel
    from pixelwise.models.weights import load_checkpoint, model_from_checkpoint

    ckpt = checkpoint(tmp_path, "unet", base_channels=8)
    report = export_onnx(ckpt, tmp_path / "m.onnx", height=64, width=96, dynamic=False)
    assert not report["dynamic"]
    onnx_model = OnnxModel(tmp_path / "m.onnx")
    assert onnx_model.fixed_size == (64, 96) and onnx_model.fixed_batch == 1
    x = torch.randn(2, 3, 70, 90)
    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("pixelwise.inference.onnx_backend").addHandler(handler)
    try:
        got = onnx_model(x)
        onnx_model(x)
    finally:
        logging.getLogger("pixelwise.inference.onnx_backend").removeHandler(handler)
    assert said == [  # said once, not per image
        f"{tmp_path / 'm.onnx'} was exported at a fixed 64x96: inputs of other sizes (here 70x90) are resized to it "
        "and the scores back, which blurs them; export at the size you predict (--size H W), or use the checkpoint"
    ]
    model = model_from_checkpoint(load_checkpoint(ckpt), ckpt).eval()
    with torch.no_grad():
        # shrunk with antialiasing where it shrinks (70 -> 64 rows), as the inference scales and training do
        shrunk = F.interpolate(x, size=(64, 96), mode="bilinear", antialias=True)
        ref = F.interpolate(model(shrunk), size=(70, 90), mode="bilinear")
    assert got.shape == (2, 3, 70, 90)
    assert (got - ref).abs().max() < 1e-4 * ref.abs().max().clamp(min=1)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="Inductor needs a C++ compiler")
def test_compiled_inference_matches_eager():
    torch.manual_seed(0)
    model = randomise_bn(build_model("unet", num_classes=3, base_channels=8))
    reference = copy.deepcopy(model)
    fast = optimize_for_inference(model, compile=True)
    assert hasattr(fast, "_orig_mod")  # torch.compile's wrapper
    x = torch.randn(2, 3, 64, 80)
    with torch.inference_mode():
        ref = reference(x)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max().clamp(min=1)


def test_inference_weights_dtype_follows_amp_on_cuda_only():
    from pixelwise.device import inference_dtype

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert inference_dtype(cpu, "bf16") is None and inference_dtype(gpu, "none") is None
    assert inference_dtype(gpu, "fp16") == torch.float16 and inference_dtype(gpu, "bf16") == torch.bfloat16


def test_export_example_sizes(tmp_path):
    from pixelwise.export import export_onnx

    pytest.importorskip("onnxruntime")
    ckpt = checkpoint(tmp_path, "unet", base_channels=8)
    # 20 - 13 is under the U-Net's total stride (16): the second check size was refused and the export fell back to a
    # fixed-size graph without saying why; it now checks at a larger odd size instead
    report = export_onnx(ckpt, tmp_path / "m.onnx", height=20, width=24)
    assert report["dynamic"] and set(report["max_abs_diff"]) == {"1x20x24", "2x33x31", "relative"}
    with pytest.raises(ConfigError) as e:
        export_onnx(ckpt, tmp_path / "small.onnx", height=8, width=24)
    assert str(e.value) == (
        "--size 8 24: model unet needs inputs of at least 16x16 pixels (its total stride); give a larger example size"
    )
    assert not (tmp_path / "small.onnx").exists()


def test_an_older_opset_is_never_raised_by_the_dynamo_fallback(tmp_path, monkeypatch):
    """--opset 10: TorchScript's graph failed the check and the dynamo exporter wrote opset 18, exit 0 with a
    warning; a runtime that reads opset 10 got a file it cannot read."""
    import pixelwise.export as export

    ckpt = checkpoint(tmp_path, "unet", base_channels=8)
    tried = []
    real_export = export._export

    def torchscript_fails(model, x, path, opset, dynamic, how, meta):
        tried.append(how)
        if how == "torchscript":
            raise RuntimeError("onnxruntime's outputs differ from PyTorch's at 1x32x32 (relative 8.4e-02)")
        return real_export(model, x, path, opset, dynamic, how, meta)

    monkeypatch.setattr(export, "_export", torchscript_fails)
    with pytest.raises(PixelwiseError) as e:
        export.export_onnx(ckpt, tmp_path / "m.onnx", height=32, width=32, opset=10)
    assert tried == ["torchscript", "torchscript"] and not (tmp_path / "m.onnx").exists()
    assert str(e.value).startswith("ONNX export of unet at opset 10 failed: torchscript dynamic: RuntimeError: ")
    assert str(e.value).endswith("; a higher --opset (17 by default) may express it")
    with pytest.raises(ConfigError) as e:
        export.export_onnx(ckpt, tmp_path / "m.onnx", height=32, width=32, opset=16, exporter="dynamo")
    assert str(e.value) == (
        "opset=16 (--opset): the dynamo exporter writes opsets 18 and up; give 18 or more, or exporter='torchscript' "
        "(--exporter torchscript)"
    )


def test_an_example_size_beyond_memory_is_one_line(tmp_path):
    """--size 100000 100000: the allocator's traceback from the example image."""
    from pixelwise.errors import ResourceError
    from pixelwise.export import export_onnx

    ckpt = checkpoint(tmp_path, "unet", base_channels=8)
    with pytest.raises(ResourceError) as e:
        export_onnx(ckpt, tmp_path / "m.onnx", height=1 << 20, width=1 << 20)
    assert str(e.value).startswith(f"--size {1 << 20} {1 << 20}: not enough memory for an example image of this size")
    assert "\n" not in str(e.value) and not (tmp_path / "m.onnx").exists()


def test_an_instance_graph_of_a_fixed_size_refuses_other_sizes_naming_the_file(tmp_path):
    from pixelwise.export import export_onnx
    from pixelwise.inference.onnx_backend import OnnxModel

    ckpt = checkpoint(tmp_path, "unet", base_channels=8, instance_head="panoptic")
    export_onnx(ckpt, tmp_path / "p.onnx", height=32, width=32, dynamic=False)
    graph = OnnxModel(tmp_path / "p.onnx")
    assert set(graph(torch.zeros(1, 3, 32, 32))) == {"out", "center", "offset"}
    with pytest.raises(CheckpointError) as e:
        graph(torch.zeros(1, 3, 48, 40))
    assert str(e.value) == (
        f"{tmp_path / 'p.onnx'} is an instance graph exported at a fixed 32x32: it cannot take a 48x40 image; export "
        "it again without --static (or at this size), or predict with the checkpoint"
    )


def test_export_reports_the_opset_it_wrote_quietly_and_refuses_folders_and_taken_sidecars(tmp_path, capfd, monkeypatch):
    """The dynamo fallback writes opset 18 whatever was asked, and the report, the message and the file's metadata
    said the number asked for; the failed TorchScript attempt printed its whole graph (hundreds of lines)."""
    import onnx

    import pixelwise.export as export

    ckpt = checkpoint(tmp_path, "unet", base_channels=8)
    for opset in (3, 99):  # no exporter writes them: it fell back to a fixed-size graph of opset 18
        with pytest.raises(ConfigError) as e:
            export.export_onnx(ckpt, tmp_path / "m.onnx", height=32, width=32, opset=opset)
        assert (
            str(e.value)
            == f"opset={opset} (--opset): torch's exporters write opsets 7 to 23 (whole numbers); 17 by default"
        )
    real_export = export._export

    def torchscript_fails(model, x, path, opset, dynamic, how, meta):
        if how == "torchscript":
            raise RuntimeError(f"Unsupported onnx_opset_version: {opset}")
        return real_export(model, x, path, opset, dynamic, how, meta)

    monkeypatch.setattr(export, "_export", torchscript_fails)
    capfd.readouterr()
    report = export.export_onnx(ckpt, tmp_path / "m.onnx", height=32, width=32, dynamic=False, opset=17)
    monkeypatch.undo()
    out, err = capfd.readouterr()
    assert (report["opset"], report["exporter"]) == (18, "dynamo")
    assert report["failures"] == ["torchscript: RuntimeError: Unsupported onnx_opset_version: 17"]
    # nothing printed but our own warning (shown where the CLI's log handler is set up)
    assert out == "" and all("the dynamo exporter wrote ONNX opset 18, not the 17" in line for line in err.splitlines())
    graph = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [18]
    meta = json.loads(next(p.value for p in graph.metadata_props if p.key == export.META_KEY))
    assert meta["onnx"]["opset"] == 18

    with pytest.raises(PixelwiseError) as e:
        export.export_onnx(ckpt, tmp_path, height=32, width=32)
    assert str(e.value) == f"--out {tmp_path} is a folder: give the ONNX file's name (e.g. {tmp_path / 'model.onnx'})"
    # a weights file beside the graph (a graph over 2 GB) is not replaced unasked
    (tmp_path / "big.onnx.data").write_bytes(b"precious")
    real_export = export._export

    def with_external_data(model, x, path, *args):
        real_export(model, x, path, *args)
        (path.parent / f"{path.name}.data").write_bytes(b"weights")

    monkeypatch.setattr(export, "_export", with_external_data)
    with pytest.raises(PixelwiseError) as e:
        export.export_onnx(ckpt, tmp_path / "big.onnx", height=32, width=32, dynamic=False)
    assert str(e.value) == (
        f"the graph keeps its weights beside it in {tmp_path / 'big.onnx.data'}, which exists: pass --overwrite to "
        "replace it, or choose another --out"
    )
    assert (tmp_path / "big.onnx.data").read_bytes() == b"precious" and not (tmp_path / "big.onnx").exists()


def test_onnxruntime_backend_refuses_settings_it_would_ignore(tmp_path):
    """--amp bf16 was accepted and recorded in the manifest while the graph ran in fp32; --device cuda and
    --compile were accepted and ignored."""
    from pixelwise.engine import Predictor
    from pixelwise.export import export_onnx

    export_onnx(checkpoint(tmp_path, "unet", base_channels=8), tmp_path / "m.onnx", height=32, width=32)
    for kwargs, flags in (({"amp": "bf16"}, "--amp"), ({"device": "cuda", "compile": True}, "--device, --compile")):
        with pytest.raises(ConfigError) as e:
            Predictor(tmp_path / "m.onnx", backend="onnxruntime", **kwargs)
        assert str(e.value) == (
            f"{flags}: the onnxruntime backend runs the exported graph as it is (fp32, on the CPU); drop them, or "
            "use --backend torch with the checkpoint"
        )
    assert Predictor(tmp_path / "m.onnx", backend="onnxruntime", amp="auto").amp == "none"


def test_export_checks_the_exporter_and_the_opset_type_up_front(tmp_path):
    """exporter="nonsense" fell back to a fixed-size TorchScript graph (the failure only in the report's "failures");
    opset="17" was refused as "--opset 17: ... opsets 7 to 23", which it is, naming a flag a Python caller never
    gave."""
    import pixelwise.export as export

    ckpt = checkpoint(tmp_path, "unet", base_channels=8)
    with pytest.raises(ConfigError) as e:
        export.export_onnx(ckpt, tmp_path / "m.onnx", height=32, width=32, exporter="nonsense")
    assert str(e.value) == "exporter='nonsense' (--exporter); valid: torchscript, dynamo"
    for opset in ("17", 17.0, True):
        with pytest.raises(ConfigError) as e:
            export.export_onnx(ckpt, tmp_path / "m.onnx", height=32, width=32, opset=opset)
        assert str(e.value) == (
            f"opset={opset!r} (--opset): torch's exporters write opsets 7 to 23 (whole numbers); 17 by default"
        )
    assert not (tmp_path / "m.onnx").exists()


def test_a_fixed_size_graph_says_up_front_it_cannot_run_the_runs_scales(tmp_path, caplog):
    """A --static export of a run whose protocol averages scales 0.75/1/1.25 was written without a word, and its
    prediction resized each scaled copy back to the graph's size (3.6 % of a CamVid image's pixels unlike the
    checkpoint's), warning only "export at the size you predict", which the user had done."""
    from pixelwise.engine import Predictor
    from pixelwise.export import export_onnx
    from pixelwise.models.weights import load_checkpoint

    ckpt = checkpoint(tmp_path, "unet", base_channels=8)
    trained = load_checkpoint(ckpt)
    save_checkpoint(ckpt, {**trained, "config": {"inference": {"scales": [0.75, 1.0, 1.25], "flip": True}}})
    out = tmp_path / "static.onnx"
    with caplog.at_level(logging.WARNING, logger="pixelwise.export"):
        export_onnx(ckpt, out, height=32, width=48, dynamic=False)
    said = [r.getMessage() for r in caplog.records if r.name == "pixelwise.export"]
    assert said == [
        f"{out} takes one size (32x48, --static): the run's inference protocol averages scales 0.75/1/1.25, whose "
        "copies the graph would each resize to 32x48; predict it with --scales 1, or export without --static"
    ]
    with pytest.raises(ConfigError) as e:  # refused before any image is read
        Predictor(out, backend="onnxruntime")
    assert str(e.value) == (
        f"{out} takes one size (32x48): the inference protocol averages scales 0.75/1/1.25, whose copies the graph "
        "would each resize to 32x48; predict it with --scales 1 (inference={'scales': [1.0]}), export it again "
        "without --static, or predict with the checkpoint"
    )
    one_scale = Predictor(out, backend="onnxruntime", inference={"scales": [1.0]})
    assert list(one_scale.inference.scales) == [1.0] and one_scale.inference.flip  # the rest of the protocol kept
    # quarter turns of a non-square graph likewise; of a square one, and a single scale, they run as before
    save_checkpoint(ckpt, {**trained, "config": {"inference": {"rot90": True}}})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pixelwise.export"):
        export_onnx(ckpt, out, height=32, width=48, dynamic=False, overwrite=True)
        export_onnx(ckpt, tmp_path / "square.onnx", height=32, width=32, dynamic=False)
        export_onnx(ckpt, tmp_path / "dynamic.onnx", height=32, width=48)
    said = [r.getMessage() for r in caplog.records if r.name == "pixelwise.export"]
    assert said == [
        f"{out} takes one size (32x48, --static): the run's inference protocol averages quarter turns (rot90), "
        "whose 48x32 copies the graph would each resize to 32x48; predict it with --no-rot90, or export without "
        "--static"
    ]
    with pytest.raises(ConfigError, match=r"averages quarter turns \(rot90\), whose 48x32 copies the graph would "):
        Predictor(out, backend="onnxruntime")
    assert Predictor(out, backend="onnxruntime", inference={"rot90": False}).inference is None
    assert Predictor(tmp_path / "square.onnx", backend="onnxruntime").inference.rot90
    # the dynamic path as it was: the run's whole protocol, any size
    save_checkpoint(ckpt, {**trained, "config": {"inference": {"scales": [0.75, 1.0, 1.25], "rot90": True}}})
    export_onnx(ckpt, tmp_path / "dynamic.onnx", height=32, width=48, overwrite=True)
    dynamic = Predictor(tmp_path / "dynamic.onnx", backend="onnxruntime")
    assert list(dynamic.inference.scales) == [0.75, 1.0, 1.25] and dynamic.inference.rot90
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    reference = Predictor(ckpt, device="cpu", amp="none").predict(image)
    assert (np.asarray(dynamic.predict(image)) == np.asarray(reference)).mean() > 0.999


def test_onnx_of_an_older_checkpoint_carries_the_class_weights_it_trained_with(tmp_path):
    """A checkpoint from before meta.class_weights was recorded resolves them from its run (train.class_weights'
    method and the class_weights.json beside it); its .onnx copied the meta as it was, and predict refused it:
    "needs the class weights ... (trained without train.class_weights): set it to 0"."""
    from pixelwise.engine import Predictor
    from pixelwise.export import META_KEY, export_onnx
    from pixelwise.inference.onnx_backend import OnnxModel
    from pixelwise.models.weights import load_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    ckpt = checkpoint(run, "unet", base_channels=8)
    trained = load_checkpoint(ckpt)
    assert "class_weights" not in trained["meta"]
    config = {"train": {"class_weights": "median_frequency"}, "inference": {"class_weight_correction": 0.5}}
    save_checkpoint(ckpt, {**trained, "config": config})
    weights = [0.5, 1.25, 3.0]
    cache = {"method": "median_frequency", "classes": ["a", "b", "c"], "weights": weights}
    (run / "class_weights.json").write_text(json.dumps(cache))
    from_ckpt = Predictor(ckpt, device="cpu")
    assert list(from_ckpt.inference.class_weights) == weights
    out = tmp_path / "elsewhere" / "legacy.onnx"  # away from the run: the file carries them
    export_onnx(ckpt, out, height=32, width=32)
    assert OnnxModel(out).meta["class_weights"] == weights
    from_onnx = Predictor(out, backend="onnxruntime")
    assert from_onnx.inference == from_ckpt.inference
    # a file exported before (no class_weights in its metadata) is told to export again, not "trained without"
    import onnx

    graph = onnx.load(str(out), load_external_data=False)
    entry = next(p for p in graph.metadata_props if p.key == META_KEY)
    entry.value = json.dumps({k: v for k, v in json.loads(entry.value).items() if k != "class_weights"})
    onnx.save(graph, str(tmp_path / "older.onnx"))
    with pytest.raises(ConfigError) as e:
        Predictor(tmp_path / "older.onnx", backend="onnxruntime")
    assert str(e.value) == (
        f"{tmp_path / 'older.onnx'}: inference.class_weight_correction=0.5 needs the class weights the model trained "
        "with, and it records none (an older export: export it again from the run's checkpoint, which resolves "
        "them), or set it to 0"
    )
    # a run that recorded none (trained without) still says so, and one that says so in its meta keeps it
    save_checkpoint(ckpt, {**trained, "config": {"train": {"class_weights": None}}})
    export_onnx(ckpt, out, height=32, width=32, overwrite=True)
    props = onnx.load(str(out), load_external_data=False).metadata_props
    assert json.loads(next(p.value for p in props if p.key == META_KEY))["class_weights"] is None
