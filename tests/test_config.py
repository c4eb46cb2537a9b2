import re

import pytest
import torch
import yaml

from pixelwise import build_model, list_models
from pixelwise.config import DEFAULTS, load_config
from pixelwise.data import DatasetInfo
from pixelwise.engine import model_spec
from pixelwise.errors import ConfigError

from .conftest import REPO


def write(tmp_path, cfg):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


BASE = {"model": {"name": "unet", "base_channels": 8}, "data": {"dataset": "toy"}, "train": {"iters": 5}}


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(
        write(tmp_path, BASE),
        [
            "train.iters=7",
            "data.crop_size=[32, 48]",
            "model.num_classes=3",
            "data.root=/somewhere",
            "train.eval_interval=2",
            "data.batch_size=2",
        ],
    )
    assert cfg["train"]["iters"] == 7 and cfg["train"]["eval_interval"] == 2
    assert cfg["data"]["crop_size"] == [32, 48] and cfg["data"]["batch_size"] == 2
    assert cfg["data"]["root"] == "/somewhere"
    assert cfg["model"] == {"name": "unet", "base_channels": 8, "num_classes": 3}
    assert cfg["train"]["lr"] == DEFAULTS["train"]["lr"]


def test_unknown_keys_list_the_valid_ones(tmp_path):
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) train.itres; valid: train.iters"):
        load_config(path, ["train.itres=3"])
    with pytest.raises(ConfigError, match=r"model.widht for model 'unet'; valid: model.name, model.num_classes"):
        load_config(path, ["model.widht=3"])
    with pytest.raises(ConfigError, match=r"unknown config section\(s\) optim"):
        load_config(write(tmp_path, {**BASE, "optim": {}}))
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(path, ["iters=3"])


def test_bad_values(tmp_path):
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match="train.iters should be int"):
        load_config(path, ["train.iters=many"])
    with pytest.raises(ConfigError, match="unknown model.name 'resnet'"):
        load_config(path, ["model.name=resnet"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_yaml_mistakes_are_one_line_naming_the_file_and_place(tmp_path):
    """A key given twice (PyYAML kept the last silently: a second train section undid the first), a tab and a
    broken --set value: one line each, with the line and column (PyYAML's own message spans five to seven)."""
    cases = {
        "dup.yaml": (
            "train:\n  lr: 0.1\ndata:\n  batch_size: 2\ntrain:\n  iters: 2\n",
            "line 5, column 1: key 'train' given twice (first at line 1): keep one",
        ),
        "dup2.yaml": (
            "train:\n  lr: 0.1\n  lr: 0.001\n",
            "line 3, column 3: key 'lr' given twice (first at line 2): keep one",
        ),
        "tab.yaml": (
            "model:\n\tname: unet\n",
            "line 2, column 1: found character '\\t' that cannot start any token "
            "(indent with spaces: YAML takes no tabs)",
        ),
    }
    for name, (text, problem) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config(tmp_path / name)
        assert str(e.value) == f"config file {tmp_path / name} is not valid YAML: {problem}"
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, BASE), ["train.lr=[1"])
    assert (
        str(e.value)
        == "--set 'train.lr=[1': cannot parse the value (line 1, column 3: expected ',' or ']', but got '<stream end>')"
    )


def test_normalisation_and_class_weights_are_checked_at_load(tmp_path):
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError) as e:  # mmsegmentation's convention trained silently on [0, 1] images
        load_config(path, ["data.mean=[123.675, 116.28, 103.53]", "data.std=[58.395, 57.12, 57.375]"])
    assert str(e.value) == (
        "data.mean=[123.675, 116.28, 103.53], data.std=[58.395, 57.12, 57.375] are on a 0-255 scale, but images "
        "are read in [0, 1]: divide them by 255 (data.mean=[0.485, 0.456, 0.406], data.std=[0.229, 0.224, 0.225])"
    )
    norm = "give one finite mean and one std > 0 per input channel, on [0, 1] images"
    # std 0 was a ValueError at the first batch, a length mismatch a RuntimeError there
    for flags, given in [
        (["data.std=[0.2, 0, 0.2]"], "data.mean=[0.485, 0.456, 0.406], data.std=[0.2, 0, 0.2]"),
        (["data.mean=[0.5, 0.5]"], "data.mean=[0.5, 0.5], data.std=[0.229, 0.224, 0.225]"),
        (["data.mean=[.nan, 0.5, 0.5]"], "data.mean=[nan, 0.5, 0.5], data.std=[0.229, 0.224, 0.225]"),
    ]:
        with pytest.raises(ConfigError, match=f"^{re.escape(given)}: {re.escape(norm)}"):
            load_config(path, flags)
    # negative, NaN or non-number weights trained silently or failed mid-run; an unknown method only after a scan
    for value in ("[1, -1, 1]", "[1, .nan, 1]", "[0, 0, 0]", "[1, a, 1]"):
        with pytest.raises(ConfigError, match=r"^train.class_weights=\[.*\]: give one finite weight >= 0 per class"):
            load_config(path, [f"train.class_weights={value}"])
    with pytest.raises(ConfigError) as e:
        load_config(path, ["train.class_weights=median_freq"])
    assert str(e.value) == (
        "train.class_weights='median_freq'; valid: median_frequency, inverse_frequency, or a list of one weight per "
        "class"
    )
    assert load_config(path, ["train.class_weights=[0, 1, 2.5]"])["train"]["class_weights"] == [0, 1, 2.5]


def test_null_only_where_it_means_something(tmp_path):
    path = write(tmp_path, BASE)
    # each of these was a TypeError traceback at load or at the first batch
    for key, kind, default in [
        ("data.batch_size", "an int", "4"),
        ("train.lr", "a float", "0.01"),
        ("train.ema_decay", "a float", "0.0"),
        ("inference.scales", "a list", "[1.0]"),
        ("inference.class_weight_correction", "a float", "0.0"),
        ("instances.top_k", "an int", "200"),
    ]:
        message = f"config key {key} cannot be null; give {kind} (default {default})"
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            load_config(path, [f"{key}=null"])
    cfg = load_config(path, ["data.crop_size=null", "data.scale_range=null", "train.class_weights=null"])
    assert cfg["data"]["crop_size"] is None and cfg["data"]["scale_range"] is None


def test_num_classes_must_match_dataset(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["model.num_classes=4"])
    info = DatasetInfo("toy", ["a", "b", "c"], [[0, 0, 0]] * 3)
    with pytest.raises(ConfigError, match=r"model.num_classes=4 but data set 'toy' has 3 classes"):
        model_spec(cfg, info)
    cfg = load_config(write(tmp_path, BASE))
    assert model_spec(cfg, info)["num_classes"] == 3
    cfg = load_config(write(tmp_path, BASE), ["model.in_channels=1"])
    with pytest.raises(ConfigError, match="data.mean has 3 values but the model takes 1 input channel"):
        model_spec(cfg, info)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg["data"]["dataset"]


def test_every_model_has_a_config_that_builds_it():
    configs = {}
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        configs.setdefault(cfg["model"]["name"], cfg)
    assert set(configs) == set(list_models())
    for name, cfg in configs.items():
        spec = {k: v for k, v in cfg["model"].items() if k != "name"}
        spec.setdefault("num_classes", 11)
        with torch.device("meta"):  # structure only, no memory
            build_model(name, **spec)


def test_yaml_merge_keys_may_set_a_merged_key_again(tmp_path):
    """`<<: *defaults` then a key of the defaults: YAML's override, not a key given twice (the duplicate check
    refused every merge key at first)."""
    (tmp_path / "m.yaml").write_text(
        "base: &d {name: unet, base_channels: 4, depth: 2}\nmodel: {<<: *d, base_channels: 8}\ndata: {dataset: toy}\n"
    )
    with pytest.raises(ConfigError, match="unknown config section"):  # the anchor's own section, by name
        load_config(tmp_path / "m.yaml")
    (tmp_path / "n.yaml").write_text("model: {<<: {name: unet, depth: 2}, depth: 3}\ndata: {dataset: toy}\n")
    assert load_config(tmp_path / "n.yaml")["model"]["depth"] == 3


def test_yaml_integers_are_yaml_1_2s(tmp_path):
    """PyYAML reads YAML 1.1's integers: `iters: 010` was 8 (octal), `[0256, 0256]` [174, 174], `1:30` 90
    (base 60), `0b11` 3, each without a word. Now as YAML 1.2 (and JSON) read them: 010 is 10, 1_000 1000,
    0o10 8, 0x1F 31, and 1:30 or 0b11 a string, which the config's type check refuses."""
    from pixelwise.fileio import load_yaml

    assert load_yaml("a: 010\nb: [0256, 0256]\nc: 1_000\nd: 0o10\ne: 0x1F\nf: -5\ng: +3\nh: 1e-3\ni: 1.5") == {
        "a": 10, "b": [256, 256], "c": 1000, "d": 8, "e": 31, "f": -5, "g": 3, "h": 0.001, "i": 1.5,
    }  # fmt: skip
    assert load_yaml("a: 1:30\nb: 0b11\nc: '010'") == {"a": "1:30", "b": "0b11", "c": "010"}
    # and what a run writes into its config.yaml loads back the same: the strings "08" and "0o17" (a data root
    # named after SemanticKITTI's sequence 08) were written bare and read back as 8 and 15
    from pixelwise.fileio import dump_yaml

    strings = {k: k for k in ("08", "09", "0o17", "0x1F", "1_0", "010", "+1", "-0", "1:30", "1e5", "x08")}
    assert load_yaml(dump_yaml(strings)) == strings
    path = write(tmp_path, BASE)
    assert load_config(path, ["train.iters=010"])["train"]["iters"] == 10
    with pytest.raises(ConfigError) as e:
        load_config(path, ["train.max_minutes=1:30"])
    assert str(e.value) == "config key train.max_minutes should be float, got '1:30'"


def test_an_instance_head_needs_its_instance_method(tmp_path):
    """The trainer adds the head its instances.method needs and trains no other: a panoptic head without the
    panoptic method crashed at the first step (a dict of outputs into the semantic loss), after the run folder."""
    path = write(tmp_path, BASE)
    for flags in (["model.instance_head=panoptic"], ["model.instance_head=panoptic", "instances.method=boundary"]):
        with pytest.raises(ConfigError) as e:
            load_config(path, flags)
        assert str(e.value) == (
            "model.instance_head=panoptic needs instances.method: panoptic; set it, or remove model.instance_head"
        )
    cfg = load_config(path, ["model.instance_head=panoptic", "instances.method=panoptic"])
    assert cfg["model"]["instance_head"] == "panoptic"
    assert load_config(path, ["model.instance_head=null"])["model"]["instance_head"] is None


def test_set_into_a_section_that_is_not_a_mapping(tmp_path):
    """`--set` into `model: unet` or `data: [toy]` was a TypeError or AttributeError traceback."""
    (tmp_path / "scalar.yaml").write_text("model: unet\ndata: {dataset: toy}\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "scalar.yaml", ["model.num_classes=3"])
    assert str(e.value) == "config section 'model' must be a mapping (e.g. name: unet), got 'unet'"
    (tmp_path / "list.yaml").write_text("model: {name: unet}\ndata: [toy]\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "list.yaml", ["data.batch_size=2"])
    assert str(e.value) == "config section 'data' must be a mapping (e.g. dataset: camvid), got ['toy']"


def test_a_config_file_that_is_not_utf8_text(tmp_path):
    """A UTF-16 file (Notepad's "Unicode") or a checkpoint given by mistake was a UnicodeDecodeError traceback."""
    for name, data in (("utf16.yaml", "model: {name: unet}\n".encode("utf-16")), ("best.pt", b"PK\x03\x04\x80\xff")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConfigError) as e:
            load_config(tmp_path / name)
        assert str(e.value) == (
            f"config file {tmp_path / name} is not UTF-8 text: give a YAML config (not a checkpoint), saved as UTF-8"
        )


def test_keys_that_are_not_strings_are_unknown_keys(tmp_path):
    """YAML reads `1:` as an int key: a TypeError in the unknown-key message (join, sorted)."""
    cases = {
        "1: x\nmodel: {name: unet}\ndata: {dataset: toy}\n": "unknown config section(s) 1; valid: model, data",
        "model: {name: unet, 1: 2}\ndata: {dataset: toy}\n": "unknown config key(s) model.1 for model 'unet'; valid:",
        "model: {name: unet}\ndata: {dataset: toy, 1: 2, foo: 3}\n": "unknown config key(s) data.1, data.foo; valid:",
    }
    for i, (text, message) in enumerate(cases.items()):
        (tmp_path / f"{i}.yaml").write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config(tmp_path / f"{i}.yaml")
        assert str(e.value).startswith(message)


def test_only_an_empty_section_means_the_defaults(tmp_path):
    """`train: 0`, `[]` or `false` were taken as all defaults; an empty `train:` (null) still is."""
    for value in ("0", "[]", "false", "''"):
        (tmp_path / "c.yaml").write_text(f"model: {{name: unet}}\ndata: {{dataset: toy}}\ntrain: {value}\n")
        with pytest.raises(ConfigError) as e:
            load_config(tmp_path / "c.yaml")
        got = repr(yaml.safe_load(value))
        assert str(e.value) == f"config section 'train' must be a mapping (e.g. iters: 1000), got {got}"
    (tmp_path / "c.yaml").write_text("model: {name: unet}\ndata: {dataset: toy}\ntrain:\n")
    assert load_config(tmp_path / "c.yaml")["train"] == DEFAULTS["train"]
    (tmp_path / "c.yaml").write_text("model: []\ndata: {dataset: toy}\n")
    with pytest.raises(ConfigError, match=r"^config section 'model' must be a mapping \(e.g. name: unet\), got \[\]$"):
        load_config(tmp_path / "c.yaml")


def test_init_partial_needs_init_from(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, BASE), ["train.init_partial=true"])
    assert str(e.value) == (
        "train.init_partial: true skips the tensors of train.init_from that do not fit, and train.init_from is not "
        "set: set it, or remove train.init_partial"
    )
    cfg = load_config(write(tmp_path, BASE), ["train.init_partial=true", "train.init_from=w.pt"])
    assert cfg["train"]["init_partial"] is True
