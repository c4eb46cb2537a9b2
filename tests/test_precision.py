"""eval and predict default to the run's training precision where the device computes it natively (bf16 on CPUs
with AVX-512 BF16 or AMX), fp32 otherwise or with --amp none."""

from __future__ import annotations

import logging

import pytest
import torch

import pixelwise.device as device_module
from pixelwise.config import load_config
from pixelwise.device import resolve_amp, training_amp
from pixelwise.engine import evaluate_checkpoint, train
from pixelwise.errors import ConfigError

from .conftest import write_dataset
from .test_engine import toy_config


def test_resolve_amp(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "native_precisions", lambda d: ("bf16",))
    assert resolve_amp("auto", "bf16", cpu) == "bf16"
    assert resolve_amp("auto", "none", cpu) == "none"  # a run trained in fp32 stays fp32
    assert resolve_amp("none", "bf16", cpu) == "none"  # the flag for fp32
    monkeypatch.setattr(device_module, "native_precisions", lambda d: ())
    assert resolve_amp("auto", "bf16", cpu) == "none"  # emulated bf16 would be slower: fp32
    assert resolve_amp("bf16", "none", cpu) == "bf16"  # asked for explicitly


def test_training_amp_auto_is_bf16_only_where_native(monkeypatch, caplog):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "native_precisions", lambda d: ("bf16",))
    assert training_amp("auto", cpu) == "bf16"
    assert resolve_amp("auto", "auto", cpu) == "bf16"  # eval of a run trained with train.amp=auto
    monkeypatch.setattr(device_module, "native_precisions", lambda d: ())
    assert training_amp("auto", cpu) == "none"
    assert resolve_amp("auto", "auto", cpu) == "none"
    assert training_amp("none", cpu) == "none"
    # an in-process CLI run earlier in the session stops pixelwise's records at its own handler: let caplog see them
    monkeypatch.setattr(logging.getLogger("pixelwise"), "propagate", True)
    with caplog.at_level("WARNING", logger="pixelwise.device"):
        assert training_amp("bf16", cpu) == "bf16"  # kept as asked, but warned about
    assert "this CPU has no native bf16" in caplog.text and "train.amp=auto" in caplog.text
    with pytest.raises(ConfigError, match=r"^train.amp='half'; valid: auto, none, bf16, fp16$"):
        training_amp("half", cpu)


def test_native_precisions_follow_the_cpu_flags(tmp_path, monkeypatch):
    """bf16 where the flags hold AVX-512 BF16 (Zen 4/5, Cooper Lake) or AMX (Sapphire Rapids on), else none."""
    cpus = {
        "zen5": ("fpu avx2 avx512f avx512_bf16 avx512_vnni", ("bf16",)),
        "xeon_amx": ("fpu avx2 avx512f amx_bf16 amx_tile", ("bf16",)),
        "avx2_only": ("fpu sse4_2 avx2 fma", ()),
    }
    for name, (flags, expected) in cpus.items():
        path = tmp_path / name
        path.write_text(f"processor\t: 0\nmodel name\t: {name}\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        monkeypatch.setattr(device_module, "CPUINFO", str(path))
        assert device_module.native_precisions(torch.device("cpu")) == expected, name
    monkeypatch.setattr(device_module, "CPUINFO", str(tmp_path / "none"))  # no /proc (macOS): none native
    assert device_module.native_precisions(torch.device("cpu")) == ()


@pytest.mark.parametrize("native", [("bf16",), ()])
def test_eval_defaults_to_the_runs_precision_where_native(tmp_path, monkeypatch, native):
    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(toy_config(tmp_path, iters=2, eval_interval=2, amp="bf16"))
    train(cfg, run_dir=tmp_path / "run", data_root=root, progress=False)
    monkeypatch.setattr(device_module, "native_precisions", lambda d: native)
    auto = evaluate_checkpoint(tmp_path / "run/best.pt", amp="auto", progress=False, num_workers=0)
    assert auto["amp"] == ("bf16" if native else "none")
    fp32 = evaluate_checkpoint(tmp_path / "run/best.pt", amp="none", progress=False, num_workers=0)
    assert fp32["amp"] == "none"


def test_the_runs_inference_section_is_its_validation_and_eval_default(tmp_path):
    """A run configured with inference.scales=[0.5] (a model trained on half-size images) is validated that way and
    evaluated/predicted that way unless the caller gives another protocol."""
    from pixelwise.engine import Predictor
    from pixelwise.inference import InferenceSettings

    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(toy_config(tmp_path, iters=2, eval_interval=2), ["inference.scales=[0.5]"])
    result = train(cfg, run_dir=tmp_path / "run", data_root=root, progress=False)
    ckpt = tmp_path / "run/best.pt"
    assert Predictor(ckpt).inference == InferenceSettings(scales=[0.5])
    assert Predictor(ckpt, inference=InferenceSettings(flip=True)).inference == InferenceSettings(flip=True)
    # a dict (what the CLI's flags give) overrides fields of the run's protocol and keeps the others
    assert Predictor(ckpt, inference={"flip": True}).inference == InferenceSettings(scales=[0.5], flip=True)
    assert Predictor(ckpt, inference={"scales": [1.0]}).inference is None  # the plain protocol
    pytest.importorskip("onnxruntime")
    from pixelwise.export import export_onnx

    export_onnx(ckpt, tmp_path / "m.onnx", height=32, width=32)  # the protocol travels in the ONNX metadata
    assert Predictor(tmp_path / "m.onnx", backend="onnxruntime").inference == InferenceSettings(scales=[0.5])
    half = InferenceSettings(scales=(0.5,))
    default = evaluate_checkpoint(ckpt, progress=False, num_workers=0)
    explicit = evaluate_checkpoint(ckpt, progress=False, num_workers=0, inference=half)
    assert default["inference"]["scales"] == [0.5]
    for key in ("iou", "precision", "recall"):
        assert default["metrics"][key] == pytest.approx(explicit["metrics"][key], nan_ok=True)
        # validation ran the same protocol
        assert result["last"][key] == pytest.approx(default["metrics"][key], nan_ok=True)


def test_inference_section_is_checked_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"inference scales must be positive, got \[0\]"):
        load_config(toy_config(tmp_path), ["inference.scales=[0]"])
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) inference.scale; valid: inference.scales, "):
        load_config(toy_config(tmp_path), ["inference.scale=0.5"])
    with pytest.raises(
        ConfigError,
        match=r"^inference.scales apply to semantic models; instances.method=boundary decodes instances from whole "
        r"images at scale 1 \(inference.flip and rot90 may be averaged\): remove inference.scales$",
    ):
        load_config(toy_config(tmp_path), ["inference.scales=[0.5]", "instances.method=boundary"])
    # flips and quarter turns are averaged for instance models too
    cfg = load_config(
        toy_config(tmp_path), ["inference.flip=true", "inference.rot90=true", "instances.method=boundary"]
    )
    assert cfg["inference"]["flip"] and cfg["inference"]["rot90"]


def test_cli_protocol_flags_are_overrides_of_the_runs():
    from pixelwise.cli import build_parser
    from pixelwise.cli.options import inference_settings

    parse = build_parser().parse_args
    assert inference_settings(parse(["eval", "run/best.pt"])) is None
    assert inference_settings(parse(["eval", "run/best.pt", "--flip"])) == {"flip": True}
    assert inference_settings(parse(["eval", "run/best.pt", "--flip", "--rot90"])) == {"flip": True, "rot90": True}
    assert inference_settings(parse(["predict", "run/best.pt", "a.png", "--out", "o", "--scales", "0.5", "1"])) == {
        "scales": [0.5, 1.0]
    }
    # --no-flip / --no-rot90 turn off what the run's inference section turns on
    assert inference_settings(parse(["eval", "run/best.pt", "--no-flip", "--no-rot90"])) == {
        "flip": False,
        "rot90": False,
    }
    assert inference_settings(parse(["eval", "run/best.pt", "--class-weight-correction", "0.5"])) == {
        "class_weight_correction": 0.5
    }
    assert inference_settings(parse(["eval", "run/best.pt", "--mode", "slide", "--crop", "256"])) == {
        "mode": "slide",
        "crop": [256],
    }


def test_class_weight_correction_uses_the_weights_the_run_trained_with(tmp_path):
    """The run records its class weights; eval/predict's correction divides by them (and, for runs from before
    they were recorded, by the class_weights.json cached beside the checkpoint); without any, a clear error."""
    from pixelwise.engine import Predictor

    root = write_dataset(tmp_path / "data").parent
    cfg = load_config(toy_config(tmp_path, iters=2, eval_interval=2, class_weights="median_frequency"))
    train(cfg, run_dir=tmp_path / "run", data_root=root, progress=False)
    ckpt = torch.load(tmp_path / "run/best.pt", weights_only=True)
    weights = ckpt["meta"]["class_weights"]
    assert len(weights) == len(ckpt["meta"]["classes"]) and len(set(weights)) > 1
    assert Predictor(tmp_path / "run/best.pt").inference is None  # correction 0: the plain protocol
    corrected = Predictor(tmp_path / "run/best.pt", inference={"class_weight_correction": 0.5}).inference
    assert corrected.class_weights == tuple(weights) and corrected.class_weight_correction == 0.5
    # a checkpoint from before the weights were recorded: the run directory's cache
    del ckpt["meta"]["class_weights"]
    torch.save(ckpt, tmp_path / "run/old.pt")
    assert Predictor(tmp_path / "run/old.pt", inference={"class_weight_correction": 1.0}).inference.class_weights == (
        pytest.approx(tuple(weights))
    )
    result = evaluate_checkpoint(
        tmp_path / "run/old.pt", progress=False, num_workers=0, inference={"class_weight_correction": 1.0}
    )
    assert result["inference"]["class_weight_correction"] == 1.0
    # a run trained without class weights cannot be corrected, nor trained with a correction
    plain = load_config(toy_config(tmp_path, iters=1, eval_interval=1))
    train(plain, run_dir=tmp_path / "plain", data_root=root, progress=False)
    with pytest.raises(
        ConfigError,
        match=r"best.pt: inference.class_weight_correction=1.0 needs the class weights the model trained with, and "
        r"it records none \(trained without train.class_weights\): set it to 0$",
    ):
        Predictor(tmp_path / "plain/best.pt", inference={"class_weight_correction": 1.0})
    # a run trained without class weights records None: no fallback to a class_weights.json lying beside it
    (tmp_path / "plain/class_weights.json").write_text((tmp_path / "run/class_weights.json").read_text())
    with pytest.raises(ConfigError, match=r"records none"):
        Predictor(tmp_path / "plain/best.pt", inference={"class_weight_correction": 1.0})
    # instance decoding flags on a semantic model
    with pytest.raises(
        ConfigError, match=r"plain/best.pt: --nms-kernel applies to instance models, and this one was trained without "
    ):
        Predictor(tmp_path / "plain/best.pt", decoding={"nms_kernel": 3})
    # the config refuses a correction without class weights when it loads
    with pytest.raises(
        ConfigError,
        match=r"^inference.class_weight_correction=0.5 undoes train.class_weights, which is not set: set both, or "
        r"the correction to 0$",
    ):
        load_config(toy_config(tmp_path, iters=1), ["inference.class_weight_correction=0.5"])
    # an older checkpoint of a run given a literal list: the list in its config
    literal = torch.load(tmp_path / "run/old.pt", weights_only=True)
    literal["config"]["train"]["class_weights"] = [1.0, 3.0, 0.5]
    (tmp_path / "lit").mkdir()
    torch.save(literal, tmp_path / "lit/old.pt")
    listed = Predictor(tmp_path / "lit/old.pt", inference={"class_weight_correction": 1.0}).inference
    assert listed.class_weights == (1.0, 3.0, 0.5)


def test_an_unknown_inference_precision_is_refused_where_it_is_given(tmp_path):
    """Predictor(amp="fp8") was accepted, and its first predict said "train.amp='fp8'; valid: none, bf16, fp16"
    (a setting the caller never gave, without auto)."""
    from pixelwise.engine import Predictor

    from .test_engine import tiny_run

    ckpt, root = tiny_run(tmp_path)
    message = "amp='fp8'; valid: auto, none, bf16, fp16"
    with pytest.raises(ConfigError, match=f"^{message}$"):
        Predictor(ckpt, amp="fp8")
    with pytest.raises(ConfigError, match=f"^{message}$"):
        evaluate_checkpoint(ckpt, amp="fp8", data_root=root, progress=False, num_workers=0)
    with pytest.raises(ConfigError, match=r"^amp=None; valid: auto, none, bf16, fp16$"):
        Predictor(ckpt, amp=None)
    with pytest.raises(ConfigError, match=f"^{message}$"):
        resolve_amp("fp8", "bf16", torch.device("cpu"))
