"""The Python calls behind the CLI verbs: a single path where a list is expected, write_image's arrays, and the
verb table of docs/python-api.md checked against the library."""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pixelwise import build_model
from pixelwise.config import apply_overrides, load_config
from pixelwise.data import check_dataset, write_image
from pixelwise.engine.prediction_files import expand_inputs, predict
from pixelwise.errors import DataError

from .conftest import REPO, save_toy_checkpoint, write_dataset


def tiny_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    spec = {"name": "unet", "num_classes": 3, "base_channels": 4, "depth": 2}
    return save_toy_checkpoint(tmp_path / "tiny.pt", build_model(**spec).eval(), spec)


# --- a single str or Path where a list is expected: one item, not its characters ---


@pytest.mark.parametrize("as_path", [False, True])
def test_predict_takes_a_single_path_as_one_input(tmp_path, as_path):
    image = tmp_path / "in" / "slice_24.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(image)
    written = predict(tiny_checkpoint(tmp_path), image if as_path else str(image), tmp_path / "out", progress=False)
    assert [w["image"] for w in written] == [str(image)]
    assert (tmp_path / "out" / "masks" / "slice_24.png").is_file()
    assert expand_inputs(str(image.parent)) == [image]


def test_a_folder_of_inputs_says_what_it_leaves_out(tmp_path, caplog):
    """A folder's files pixelwise does not read (a GIF, a text file) were left out without a word; Windows' and
    Chrome's JPEG name (.jfif) is read; a file named twice (itself and in its folder) is predicted once."""
    folder = tmp_path / "in"
    folder.mkdir()
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8))
    for name in ("a.jfif", "b.png", "c.gif"):
        picture.save(folder / name, format="JPEG" if name.endswith("jfif") else None)
    (folder / "notes.txt").write_text("x")
    (folder / ".hidden.png").write_bytes(b"")  # macOS's ._ files and the like: not inputs
    with caplog.at_level(logging.WARNING, logger="pixelwise.engine.prediction_files"):
        assert expand_inputs(folder) == [folder / "a.jfif", folder / "b.png"]
    assert caplog.messages == [
        f"{folder}: left out 2 file(s) whose suffix is no image or video pixelwise reads (c.gif, notes.txt); name a "
        "file itself to predict it anyway"
    ]
    twice = [folder, folder / "b.png", tmp_path / "in" / ".." / "in", folder / "c.gif"]
    assert expand_inputs(twice) == [folder / "a.jfif", folder / "b.png", folder / "c.gif"]
    # two links to one file (DVC, git-annex, a Hugging Face cache) are two inputs, each predicted
    blobs, linked = tmp_path / "blobs", tmp_path / "linked"
    blobs.mkdir(), linked.mkdir()
    picture.save(blobs / "abc123", format="PNG")
    for name in ("a.png", "b.png"):
        (linked / name).symlink_to(blobs / "abc123")
    assert expand_inputs(linked) == [linked / "a.png", linked / "b.png"]
    assert expand_inputs([linked / "b.png", linked / "a.png", linked / "b.png"]) == [linked / "b.png", linked / "a.png"]
    written = predict(tiny_checkpoint(tmp_path), twice, tmp_path / "out", progress=False)
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["a.png", "b.png", "c.png"]
    assert len(written) == 3


def test_check_dataset_takes_a_single_split_name(tmp_path):
    write_dataset(tmp_path, splits={"train": 2, "val": 2})
    report = check_dataset(tmp_path, "toy", "val", progress=False)
    assert list(report.splits) == ["val"] and report.ok
    assert report.splits["val"].images == 2


def test_load_config_takes_a_single_override(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "unet"}, "data": {"dataset": "toy"}, "train": {"iters": 10}}))
    assert load_config(path, "train.iters=5")["train"]["iters"] == 5
    assert apply_overrides({"train": {}}, "train.lr=0.5") == {"train": {"lr": 0.5}}


# --- write_image: arrays Pillow cannot save as pictures are refused in one line ---


@pytest.mark.parametrize(
    "array,got,fix",
    [
        (
            np.full((4, 4, 3), 0.5),
            "a float64 array of shape (4, 4, 3)",
            "pictures are uint8: pixelwise.data.image_to_uint8(image) scales floats in [0, 1] to 0..255",
        ),
        (
            np.zeros((4, 4, 7), np.uint8),
            "an array of shape (4, 4, 7)",
            "give H x W (grey, or class indices), H x W x 3 (RGB) or H x W x 4 (RGBA)",
        ),
        (
            np.zeros((4, 4, 5), np.uint8),
            "an array of shape (4, 4, 5)",
            "give H x W (grey, or class indices), H x W x 3 (RGB) or H x W x 4 (RGBA)",
        ),
        (
            np.zeros((4, 4), np.int64),
            "an int64 array of shape (4, 4)",
            "give uint8 (image.astype(np.uint8) for values 0..255), or uint16 for a map of more than 256 ids",
        ),
        (
            np.zeros((4, 4, 3), np.uint16),
            "a uint16 array of shape (4, 4, 3)",
            "give uint8 (image.astype(np.uint8) for values 0..255)",
        ),
        (np.zeros((0, 4), np.uint8), "an array of shape (0, 4)", "it has no pixels"),
    ],
)
def test_write_image_refuses_arrays_that_are_no_picture(tmp_path, array, got, fix):
    path = tmp_path / "x.png"
    with pytest.raises(DataError) as e:
        write_image(path, array)
    assert str(e.value) == f"cannot write {path}: the image is {got}; {fix}"
    assert not list(tmp_path.iterdir())  # nothing left behind, not even a temporary file


def test_write_image_names_a_format_that_cannot_hold_the_image(tmp_path):
    with pytest.raises(DataError) as e:
        write_image(tmp_path / "x.jpg", np.zeros((4, 4, 4), np.uint8))
    assert str(e.value) == (
        f"cannot write {tmp_path / 'x.jpg'}: JPEG cannot hold a mode RGBA image; save it as .png or .tif, "
        "or convert it first (e.g. image[..., :3] for RGB)"
    )
    with pytest.raises(DataError) as e:
        write_image(tmp_path / "x.bmpx", np.zeros((4, 4), np.uint8))
    assert (
        str(e.value) == f"cannot write {tmp_path / 'x.bmpx'}: no image format for the suffix '.bmpx'; use .png or .tif"
    )
    with pytest.raises(DataError) as e:
        write_image(tmp_path / "x.png", torch.zeros(4, 4))
    assert str(e.value) == (
        f"cannot write {tmp_path / 'x.png'}: the image is a Tensor; give a PIL image or a numpy array "
        "(a tensor: .cpu().numpy())"
    )
    assert not list(tmp_path.iterdir())


def test_write_image_keeps_writing_what_it_wrote(tmp_path):
    for name, array, mode in [
        ("grey.png", np.zeros((4, 5), np.uint8), "L"),
        ("bool.png", np.zeros((4, 5), bool), "1"),
        ("ids.png", np.full((4, 5), 300, np.uint16), "I;16"),
        ("rgb.png", np.zeros((4, 5, 3), np.uint8), "RGB"),
        ("rgba.png", np.zeros((4, 5, 4), np.uint8), "RGBA"),
        ("one.png", np.zeros((4, 5, 1), np.uint8), "L"),
        ("float.tif", np.full((4, 5), 0.25, np.float32), "F"),
        ("rgb.jpg", np.zeros((4, 5, 3), np.uint8), "RGB"),
    ]:
        write_image(tmp_path / name, array)
        with Image.open(tmp_path / name) as im:
            assert (im.mode, im.size) == (mode, (5, 4)), name
    write_image(tmp_path / "pil.png", Image.new("RGB", (3, 2)))
    assert Image.open(tmp_path / "pil.png").size == (3, 2)


# --- docs/python-api.md: every CLI verb's Python call exists, with the arguments it lists ---

DOC = REPO / "docs" / "python-api.md"


def verb_table() -> list[tuple[str, list[str]]]:
    """(verb, the calls of its row) of the table under the doc's "Every CLI verb" heading."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Every CLI verb", 1)[1]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or set(cells[0]) <= set("-: "):
            continue
        if cells[0].lower() == "verb":
            continue
        rows.append((cells[0].strip("`"), re.findall(r"`(pixelwise\.[\w.]+\(.*?\))`", cells[1])))
    return rows


def resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_the_verb_table_covers_every_cli_verb():
    from pixelwise.cli.parser import build_parser

    parser = build_parser()
    verbs = set()
    for action in parser._subparsers._group_actions:
        for verb, sub in action.choices.items():
            nested = [a for a in sub._actions if hasattr(a, "choices") and isinstance(a.choices, dict)]
            verbs |= {f"{verb} {v}" for a in nested for v in a.choices} if nested else {verb}
    verbs.add("models --backbones")
    documented = [verb for verb, _ in verb_table()]
    assert sorted(documented) == sorted(verbs)


def test_every_call_of_the_verb_table_exists_with_its_arguments():
    rows = verb_table()
    assert rows and all(calls for _, calls in rows), rows
    for verb, calls in rows:
        functions = {}
        for call in calls:
            node = ast.parse(call, mode="eval").body
            assert isinstance(node, ast.Call), call
            functions[call] = (node, resolve(ast.unparse(node.func)))
        for call, (node, function) in functions.items():
            params = inspect.signature(function).parameters
            forwarded = any(p.kind is p.VAR_KEYWORD for p in params.values())
            others = {name for c, (_, f) in functions.items() if c != call for name in inspect.signature(f).parameters}
            for arg in node.args:
                name = arg.value.id if isinstance(arg, ast.Starred) else arg.id
                assert name in params, f"{verb}: {call}: no parameter {name!r}"
            for keyword in node.keywords:
                name = keyword.arg
                if name not in params:  # a **options passed on: to another call of the row
                    assert forwarded and name in others, f"{verb}: {call}: no parameter {name!r}"
                    continue
                default = params[name].default
                try:
                    value = ast.literal_eval(keyword.value)
                except ValueError:
                    continue
                assert default is not inspect.Parameter.empty and value == default, (
                    f"{verb}: {call}: {name}={value!r}, the default is {default!r}"
                )


def test_write_image_still_saves_what_pillow_saved_as_tiff(tmp_path):
    """Two-dimensional integer and float arrays of every width Pillow writes to TIFF are kept (the array check
    refused int8, int16, uint32 and float64 ones at first)."""
    for dtype in (np.int8, np.int16, np.int32, np.uint32, np.float32, np.float64):
        array = np.arange(12, dtype=dtype).reshape(3, 4)
        write_image(tmp_path / f"{np.dtype(dtype).name}.tif", array)
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"{np.dtype(dtype).name}.tif")), array)
