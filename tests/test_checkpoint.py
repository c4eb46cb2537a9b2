import pickle
import zipfile

import pytest
import torch

from pixelwise import build_model
from pixelwise.errors import CheckpointError
from pixelwise.fileio import atomic_write
from pixelwise.models.weights import load_checkpoint, load_weights, model_from_checkpoint, save_checkpoint, torch_load


def make_ckpt(num_classes=3):
    model = build_model("unet", num_classes=num_classes, base_channels=4)
    meta = {
        "model": {"name": "unet", "num_classes": num_classes, "base_channels": 4},
        "classes": ["a"] * num_classes,
        "palette": [[0, 0, 0]] * num_classes,
        "ignore_index": 255,
        "mean": [0.5] * 3,
        "std": [0.2] * 3,
    }
    return model, {"model": model.state_dict(), "meta": meta}


def test_round_trip(tmp_path):
    model, ckpt = make_ckpt()
    save_checkpoint(tmp_path / "a.pt", ckpt)
    loaded = model_from_checkpoint(load_checkpoint(tmp_path / "a.pt"))
    x = torch.randn(1, 3, 16, 16)
    model.eval()
    assert torch.equal(model(x), loaded(x))


def test_other_number_of_classes_is_named(tmp_path):
    _, ckpt = make_ckpt(num_classes=5)
    model = build_model("unet", num_classes=2, base_channels=4)
    with pytest.raises(CheckpointError, match=r"classifier.weight .*a checkpoint for 5 classes, a model for 2"):
        load_weights(model, ckpt["model"], "x.pt")
    with pytest.raises(CheckpointError, match="missing key"):
        load_weights(build_model("unet", num_classes=5, base_channels=4, depth=3), ckpt["model"], "x.pt")


class Evil:
    """Unpickling it would create the file ``marker``: the payload must never run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_refuses_pickled_code_and_foreign_files(tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"format": "pixelwise", "model": {}, "meta": Evil(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "evil.pt")
    assert str(e.value) == (
        f"cannot load checkpoint {tmp_path / 'evil.pt'}: it holds Python objects besides tensors and plain types (a "
        "pickled model or optimizer?), and pixelwise never unpickles code: save a state dict (model.state_dict()) or "
        "a pixelwise checkpoint"
    )
    assert not marker.exists()
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a pixelwise checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "junk.pt")
    assert str(e.value) == (
        f"cannot load checkpoint {tmp_path / 'junk.pt'}: it is not a PyTorch file (truncated, or another format)"
    )


def test_damaged_bytes_inside_a_checkpoint_are_caught(tmp_path):
    """torch.load does not check its zip records' CRC-32: bytes damaged inside a tensor (a disk or copy error)
    loaded as other weights without a word, and --resume trained on from them."""
    weights = {"w": torch.arange(4096.0), "b": torch.zeros(3)}
    save_checkpoint(tmp_path / "last.pt", {"model": weights, "meta": {k: [] for k in ("classes", "palette")}})
    good = (tmp_path / "last.pt").read_bytes()
    with zipfile.ZipFile(tmp_path / "last.pt") as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)  # the 4096 floats
        start = good.index(torch.arange(4096.0).numpy().tobytes())  # their bytes in the file
    damaged = bytearray(good)
    damaged[start + 100 : start + 104] = b"\x00\x00\x80\x7f"  # one float becomes inf
    (tmp_path / "damaged.pt").write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError) as e:
        torch_load(tmp_path / "damaged.pt", "checkpoint")
    assert str(e.value) == (
        f"cannot load checkpoint {tmp_path / 'damaged.pt'}: its bytes are damaged (record {record.filename} fails "
        "its checksum; a disk or copy error): use a good copy, or an earlier checkpoint"
    )
    assert torch.equal(torch_load(tmp_path / "last.pt", "checkpoint")["model"]["w"], weights["w"])
    # a file torch wrote without checksums (torch.serialization.set_crc32_options(False)) loads, as in torch
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(weights, tmp_path / "unchecked.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(torch_load(tmp_path / "unchecked.pt", "checkpoint")["w"], weights["w"])


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def failing(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_atomic_write_gives_the_umasks_permissions_and_leaves_the_umask_alone(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.json", lambda f: f.write(b"{}"))
        assert os.umask(0o027) == 0o027  # not changed on the way
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640 and (tmp_path / "a.json").read_bytes() == b"{}"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_write_image_keeps_the_old_picture_when_saving_fails(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from pixelwise.data import write_image

    write_image(tmp_path / "a.png", np.full((4, 5), 7, np.uint8))
    before = (tmp_path / "a.png").read_bytes()

    def half_then_fail(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_image(tmp_path / "a.png", np.zeros((4, 5), np.uint8))
    assert (tmp_path / "a.png").read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["a.png"]
    monkeypatch.undo()
    write_image(tmp_path / "s.tif", Image.fromarray(np.zeros((4, 5), np.uint8)), save_all=True,
                append_images=[Image.fromarray(np.ones((4, 5), np.uint8))])  # fmt: skip
    assert Image.open(tmp_path / "s.tif").n_frames == 2


def test_a_checkpoint_without_its_meta_or_a_folder_is_named_as_such(tmp_path):
    """A meta without classes loaded, then failed with KeyError: 'classes' in predict (and export wrote an ONNX
    file that failed the same way); a folder given as the checkpoint said it did not exist."""
    _, ckpt = make_ckpt()
    del ckpt["meta"]["classes"], ckpt["meta"]["palette"]
    save_checkpoint(tmp_path / "a.pt", ckpt)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "a.pt")
    assert str(e.value) == (
        f"{tmp_path / 'a.pt'}: its meta lacks classes, palette (a checkpoint written by hand or by another tool?); "
        "a pixelwise checkpoint's meta holds model, classes, palette, mean, std"
    )
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path)
    assert str(e.value) == f"checkpoint {tmp_path} is a folder: give the file in it (e.g. {tmp_path / 'best.pt'})"


def test_an_old_deeplab_run_with_empty_rates_still_loads(tmp_path):
    """DeepLab v3 took `rates: []` for its default rates (and trained so) before an empty list was refused: such a
    run's checkpoint must still build the net it trained."""
    model = build_model("deeplabv3", backbone="resnet18", num_classes=2)  # the default rates (6, 12, 18)
    meta = {"model": {"name": "deeplabv3", "backbone": "resnet18", "num_classes": 2, "rates": []},
            "classes": ["a", "b"], "palette": [[0, 0, 0], [1, 1, 1]], "mean": [0.5] * 3, "std": [0.2] * 3}  # fmt: skip
    save_checkpoint(tmp_path / "old.pt", {"model": model.state_dict(), "meta": meta})
    loaded = model_from_checkpoint(load_checkpoint(tmp_path / "old.pt"))
    assert loaded.aspp.rates == (6, 12, 18)
