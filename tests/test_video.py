"""Video prediction end to end on tiny videos written here with PyAV (a moving square, 12 frames of 64x48): the
outputs' frame count, rate and size, the lossless masks equal to predicting the frames one by one, the audio
passed through, the effect video, temporal smoothing against flicker, and the one-line errors."""

from __future__ import annotations

import base64
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelwise.config import load_config
from pixelwise.engine import Predictor, predict, train
from pixelwise.errors import ConfigError, DataError, PixelwiseError
from pixelwise.inference import InferenceSettings, InstanceSettings

from .conftest import write_dataset
from .test_engine import toy_config

av = pytest.importorskip("av", reason="video needs PyAV: pip install 'pixelwise[video]'")

from pixelwise.data.video import VideoWriter, choose_codec, is_video, probe_video, read_frames  # noqa: E402
from pixelwise.engine.prediction_out_dir import check_inputs_kept, earlier_outputs_left_out  # noqa: E402
from pixelwise.engine.video import (  # noqa: E402
    SCENE_CUT_THRESHOLD,
    FlickerMeter,
    SceneCutDetector,
    TemporalEMA,
    batches,
    flicker,
    image_probabilities,
    label_change_rate,
    predict_video,
    sequence_scores,
)
from pixelwise.inference.effects import Effect, cutout, foreground_alpha  # noqa: E402

W, H, N, FPS = 64, 48, 12, 25


def square_frames(n: int = N) -> list[np.ndarray]:
    """A grey square (the toy model's class 2) moving right over a dark textured background (classes 0 and 1)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 40, (H, W, 3), dtype=np.uint8)
    frames = []
    for i in range(n):
        f = base.copy()
        f[12:32, 4 + 3 * i : 24 + 3 * i] = 140
        frames.append(f)
    return frames


def write_video(
    path, frames, fps=FPS, codec="libx264", audio: str | None = None, sample_rate: int = 8000, times=None, setup=None
):
    """``frames`` encoded with PyAV, with a sine tone in ``audio`` (an audio codec name) for the video's length;
    with ``times`` (seconds, kept to the millisecond) each frame at its own time: a variable-rate video, as phones
    record; ``setup(stream)`` sets more of the video stream (a display matrix, a sample aspect ratio)."""
    out = av.open(str(path), "w")
    stream = out.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
    if setup is not None:
        setup(stream)
    if times is not None:
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
    astream = out.add_stream(audio, rate=sample_rate) if audio else None
    for i, frame in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        if times is None:
            vf.pts = i
        else:
            vf.pts, vf.time_base = round(times[i] * 1000), Fraction(1, 1000)
        for packet in stream.encode(vf):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    if astream is not None:
        mux_tone(out, astream, len(frames) / fps)
    out.close()
    return path


def mux_tone(out, astream, seconds, start=0.0, level=1.0):
    """A 440 Hz tone ``seconds`` long encoded into ``astream`` (mono, in the codec's sample format) from ``start``
    seconds on, ``level`` times as loud as by default; the last part frame left out where the codec takes whole
    frames only (MP2)."""
    ctx = astream.codec_context
    rate, fmt, size = ctx.sample_rate, ctx.format.name, ctx.frame_size
    tone = level * 0.3 * np.sin(2 * np.pi * 440 * np.arange(round(rate * seconds)) / rate)
    if fmt == "u8":
        samples = (tone * 127 + 128).astype(np.uint8)
    elif fmt.startswith("s16"):
        samples = (tone * 3000).astype(np.int16)
    elif fmt.startswith("s32"):  # libmp3lame's
        samples = (tone * 2**28).astype(np.int32)
    else:
        samples = tone.astype(np.float32)
    if size and not av.Codec(ctx.name, "w").capabilities & av.codec.codec.Capabilities.small_last_frame:
        samples = samples[: len(samples) // size * size]
    chunk = size or 1024
    for k in range(0, len(samples), chunk):
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, k : k + chunk]), format=fmt, layout="mono")
        af.sample_rate, af.pts = rate, round(start * rate) + k
        for packet in astream.encode(af):
            out.mux(packet)
    for packet in astream.encode(None):
        out.mux(packet)


def stream_facts(path):
    """(decoded frame count, average frame rate, width, height, audio codec or None) read back with PyAV."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        count = sum(1 for _ in c.decode(v))
        audio = c.streams.audio[0].codec_context.name if c.streams.audio else None
        return count, v.average_rate, v.codec_context.width, v.codec_context.height, audio


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """tests/test_reliability.py's toy model trained for 100 iterations instead of 2 (about a second): at 2 it
    predicts one class everywhere, and comparing label maps would prove nothing. Dark pixels come out as
    classes 0 and 1, the square as class 2."""
    tmp = tmp_path_factory.mktemp("toy")
    root = write_dataset(tmp / "data").parent
    train(
        load_config(toy_config(tmp, iters=100, eval_interval=100)), run_dir=tmp / "run", data_root=root, progress=False
    )
    return tmp / "run" / "best.pt"


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor(checkpoint, device="cpu")


def test_predict_video_writes_overlay_masks_and_effect(predictor, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", square_frames())
    effect = Effect.from_spec("blur=2", predictor.classes, predictor.meta["palette"], foreground="c1,c2")
    files = predict_video(
        predictor, clip, tmp_path / "out", masks="video", effect=effect, batch_size=5, progress=False
    )  # 5 does not divide 12: a short last batch
    assert files["overlay"] == str(tmp_path / "out" / "clip_overlay.mp4")
    assert files["effect"] == str(tmp_path / "out" / "clip_effect.mp4")
    assert files["masks"] == str(tmp_path / "out" / "clip_masks.mkv")
    assert (files["frames"], files["fps"], files["size"]) == (12, "25", "64x48")
    assert files["codec"] == choose_codec() == "libx264"
    for key in ("overlay", "effect", "masks"):
        assert stream_facts(files[key])[:4] == (N, FPS, W, H), key
    # lossless: the mask video holds exactly the labels of predicting each decoded frame on its own
    decoded = list(read_frames(clip))
    labels = [m[..., 0] for m in read_frames(files["masks"], "L")]
    assert len(labels) == N and set(np.unique(np.stack(labels))) == {0, 1, 2}
    for frame, label in zip(decoded, labels, strict=True):
        np.testing.assert_array_equal(label, predictor.predict(frame))
    assert float(files["flicker"]) == pytest.approx(flicker(labels), abs=1e-6)


@pytest.mark.parametrize(
    ("ext", "codec"), [("mov", "libx264"), ("mkv", "libx264"), ("webm", "libvpx-vp9"), ("avi", "mpeg4")]
)
def test_other_containers(predictor, tmp_path, ext, codec):
    clip = write_video(tmp_path / f"clip.{ext}", square_frames(), codec=codec)
    files = predict_video(predictor, clip, tmp_path / "out", progress=False)
    assert stream_facts(files["overlay"])[:4] == (N, FPS, W, H)


def test_masks_as_pngs_and_rgba_cutout(predictor, tmp_path):
    from PIL import Image

    clip = write_video(tmp_path / "clip.mkv", square_frames(), codec="ffv1")  # another container, lossless input
    effect = Effect.from_spec("cutout", predictor.classes, predictor.meta["palette"], foreground="2")
    files = predict_video(
        predictor, clip, tmp_path / "out", masks="png", effect=effect, overlay_video=False, progress=False
    )
    assert "overlay" not in files and files["effect"].endswith("clip_effect.mov")
    pngs = sorted((tmp_path / "out" / "masks" / "clip").iterdir())
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(N)]
    frames = list(read_frames(clip))
    with av.open(files["effect"]) as c:
        rgba = [f.to_ndarray(format="rgba") for f in c.decode(video=0)]
    assert len(rgba) == N
    for frame, png, out in zip(frames, pngs, rgba, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(png)), predictor.predict(frame))
        want = cutout(frame, foreground_alpha(image_probabilities(predictor, frame), [2]))
        np.testing.assert_array_equal(out[..., :3], frame)  # PNG in MOV: lossless, alpha kept
        # batched and single-image probabilities agree to float rounding: at most one step of 255
        assert np.abs(out[..., 3].astype(int) - want[..., 3]).max() <= 1


@pytest.mark.parametrize(
    "options", [{}, {"crf": True}, {"inference": InferenceSettings(scales=(0.75, 1.0), flip=True)}], ids=str
)
def test_image_probabilities_argmax_is_the_prediction(predictor, options):
    """Effects take probabilities (the CRF's with --crf): they sum to 1 and their argmax is predict's mask,
    whether the protocol returns logits (plain) or probabilities (CRF, scales and flip)."""
    p = Predictor(predictor.checkpoint, device="cpu", **options)
    frame = square_frames()[3]
    probs = image_probabilities(p, frame)
    torch.testing.assert_close(probs.sum(0), torch.ones(H, W), atol=1e-4, rtol=0)
    assert (probs.argmax(0).numpy() == p.predict(frame)).mean() > 0.999  # ties may break either way


def test_audio_is_copied_re_encoded_or_dropped(predictor, tmp_path):
    aac = write_video(tmp_path / "aac.mp4", square_frames(), audio="aac")
    files = predict_video(predictor, aac, tmp_path / "a", progress=False)
    assert files["audio"] == "passed through (aac, copied)"
    assert stream_facts(files["overlay"])[4] == "aac"
    with av.open(files["overlay"]) as c:
        a, v = c.streams.audio[0], c.streams.video[0]
        assert float(a.duration * a.time_base) == pytest.approx(float(v.duration * v.time_base), abs=0.15)

    u8 = write_video(tmp_path / "u8.mkv", square_frames(), audio="pcm_u8")  # MP4 does not take 8-bit PCM
    files = predict_video(predictor, u8, tmp_path / "b", progress=False)
    assert files["audio"] == "passed through (pcm_u8 re-encoded as aac)"
    assert stream_facts(files["overlay"])[:5] == (N, FPS, W, H, "aac")

    files = predict_video(predictor, aac, tmp_path / "c", audio=False, progress=False)
    assert files["audio"] == "dropped (asked for)" and stream_facts(files["overlay"])[4] is None

    silent = write_video(tmp_path / "silent.mp4", square_frames())
    assert predict_video(predictor, silent, tmp_path / "d", progress=False)["audio"] == "none (the input has no audio)"


def test_smoothing_factor_one_is_no_smoothing(predictor, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", square_frames())
    plain = predict_video(predictor, clip, tmp_path / "a", masks="video", overlay_video=False, progress=False)
    same = predict_video(
        predictor, clip, tmp_path / "b", masks="video", overlay_video=False, smooth=1.0, progress=False
    )
    smoothed = predict_video(
        predictor, clip, tmp_path / "c", masks="video", overlay_video=False, smooth=0.3, progress=False
    )
    a, b = list(read_frames(plain["masks"], "L")), list(read_frames(same["masks"], "L"))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert smoothed["smooth"] == 0.3 and stream_facts(smoothed["masks"])[0] == N
    assert plain["smooth"] is None and float(smoothed["flicker"]) < float(plain["flicker"])


def noisy_sequence(frames=30, classes=3, size=(24, 32), noise=1.5, seed=0):
    """Probabilities of a still scene (a fixed label map) with fresh noise on the logits in every frame."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.randint(0, classes, size, generator=g)
    clean = torch.nn.functional.one_hot(truth, classes).permute(2, 0, 1).float()
    logits = clean[None] + noise * torch.randn((frames, classes, *size), generator=g)
    return torch.softmax(logits, 1), truth


def test_smoothing_reduces_flicker_and_carries_across_batches():
    probs, truth = noisy_sequence()
    raw = flicker(p.argmax(0).numpy() for p in probs)
    ema = TemporalEMA(0.3)
    smoothed = torch.cat([ema(b) for b in probs.split(7)])  # batches of 7: the state carries over
    assert torch.equal(smoothed[0], probs[0])  # the first frame as is
    torch.testing.assert_close(smoothed[1], 0.3 * probs[1] + 0.7 * probs[0])
    whole = TemporalEMA(0.3)(probs)
    torch.testing.assert_close(smoothed, whole)
    calm = flicker(p.argmax(0).numpy() for p in smoothed)
    assert raw > 0.2 and calm < 0.5 * raw
    scores = sequence_scores([p.argmax(0).numpy() for p in smoothed], [truth.numpy()] * len(probs), 3)
    assert scores["flicker_ground_truth"] == 0.0 and scores["flicker"] == pytest.approx(calm)
    raw_scores = sequence_scores([p.argmax(0).numpy() for p in probs], [truth.numpy()] * len(probs), 3)
    assert scores["mean_frame_miou"] > raw_scores["mean_frame_miou"]
    assert torch.equal(TemporalEMA(1.0)(probs), probs)
    with pytest.raises(ConfigError) as e:
        TemporalEMA(0)
    assert str(e.value) == "--smooth 0: the moving average's factor must be in (0, 1] (1 = no smoothing)"


def other_scene_frames(n: int = N) -> list[np.ndarray]:
    """Another shot: a bright grey field (class 2) with a dark textured square (classes 0 and 1) moving down."""
    rng = np.random.default_rng(1)
    texture = rng.integers(0, 40, (16, 16, 3), dtype=np.uint8)
    frames = []
    for i in range(n):
        f = np.full((H, W, 3), 140, np.uint8)
        f[2 + 2 * i : 18 + 2 * i, 40:56] = texture
        frames.append(f)
    return frames


def test_scene_cut_detector_tells_a_cut_from_motion_and_light():
    """A cut to another shot is one; the same shot moved a few pixels, a little brighter or darker, or as grey
    (``H x W x 1``) frames is none; the first frame of a video is no cut."""
    a, b = square_frames(4), other_scene_frames(4)
    detect = SceneCutDetector()
    assert detect.threshold == SCENE_CUT_THRESHOLD
    assert [detect(f) for f in [*a, *b, *a[:2]]] == [False] * 4 + [True] + [False] * 3 + [True, False]
    assert detect.cuts == 2
    detect.reset()
    assert detect.cuts == 0 and not detect(b[0])  # another video: its first frame is no cut
    frame = a[0]
    for same_shot in (
        np.roll(frame, (2, 3), (0, 1)),  # the camera moved a few pixels
        np.clip(frame.astype(int) + 12, 0, 255).astype(np.uint8),  # a little brighter
        np.clip(frame.astype(int) - 8, 0, 255).astype(np.uint8),  # a little darker
    ):
        assert SceneCutDetector.difference(frame, same_shot) < SCENE_CUT_THRESHOLD / 2
    assert SceneCutDetector.difference(a[0], b[0]) > 3 * SCENE_CUT_THRESHOLD
    grey = [f.mean(2, keepdims=True).astype(np.uint8) for f in (a[0], a[1], b[0])]  # --image-mode L frames
    assert [SceneCutDetector()(g) for g in grey[:1]] == [False]
    detect = SceneCutDetector()
    assert [detect(g) for g in grey] == [False, False, True]


def test_moving_average_restarts_at_a_cut():
    """``cuts[i]`` true: frame ``i`` starts again from its own probabilities; without cuts, as before."""
    probs, _ = noisy_sequence(frames=10)
    plain = TemporalEMA(0.3)(probs)
    ema = TemporalEMA(0.3)
    cuts = [False] * 10
    cuts[6] = True
    smoothed = torch.cat([ema(b, c) for b, c in zip(probs.split(4), [cuts[:4], cuts[4:8], cuts[8:]], strict=True)])
    torch.testing.assert_close(smoothed[:6], plain[:6])
    assert torch.equal(smoothed[6], probs[6])  # the new shot's first frame as it is
    torch.testing.assert_close(smoothed[7], 0.3 * probs[7] + 0.7 * probs[6])
    torch.testing.assert_close(smoothed[6:], TemporalEMA(0.3)(probs[6:]))
    torch.testing.assert_close(TemporalEMA(0.3)(probs, [False] * 10), plain)
    with pytest.raises(ValueError, match="3 cut flags for 10 frames"):
        TemporalEMA(0.3)(probs, [False] * 3)


def test_smoothing_does_not_carry_labels_across_a_scene_cut(predictor, tmp_path):
    """Scene A for 6 frames, then scene B: the smoothed average carried A's labels into B's first frames (ghosts of
    the previous shot for about 1 / A frames). It starts again at the cut: B's first frame gets exactly its own
    labels, as without smoothing; the manifest counts the cut, and motion within a shot counts none."""
    a, b = square_frames(6), other_scene_frames(6)
    clip = write_video(tmp_path / "cut.mkv", a + b, codec="ffv1")  # lossless: the frames as written
    options = {"masks": "video", "overlay_video": False, "batch_size": 4, "progress": False}  # cut mid-batch
    plain = predict_video(predictor, clip, tmp_path / "plain", **options)
    smoothed = predict_video(predictor, clip, tmp_path / "smooth", smooth=0.2, **options)
    raw = [m[..., 0] for m in read_frames(plain["masks"], "L")]
    labels = [m[..., 0] for m in read_frames(smoothed["masks"], "L")]
    assert len(labels) == 12 and label_change_rate(raw[5], raw[6]) > 0.5  # B's labels are not A's
    np.testing.assert_array_equal(labels[6], raw[6])
    assert smoothed["scene_cuts"] == 1 and "scene_cuts" not in plain
    # within a shot (the square moving 3 pixels a frame) no cut: the smoothing runs through
    still = predict_video(
        predictor, write_video(tmp_path / "one.mp4", square_frames()), tmp_path / "one", smooth=0.2, progress=False
    )
    assert still["scene_cuts"] == 0


def test_flicker_measures():
    a = np.zeros((4, 5), np.uint8)
    b = a.copy()
    b[0, :2] = 1
    assert label_change_rate(a, b) == pytest.approx(0.1)
    meter = FlickerMeter()
    for m in (a, b, b, a):
        meter.update(m)
    assert meter.pairs == 3 and meter.value == pytest.approx(0.2 / 3)
    assert np.isnan(flicker([a]))
    truth = [a, b]
    s = sequence_scores(truth, truth, 2)
    assert s["miou_per_frame"] == [1.0, 1.0] and s["miou"] == 1.0 and s["flicker"] == s["flicker_ground_truth"]
    assert [len(x) for x in batches(range(12), 5)] == [5, 5, 2]


def test_writer_keeps_odd_sizes_and_rates(tmp_path):
    frames = [np.full((33, 47, 3), 10 * i, np.uint8) for i in range(6)]
    with VideoWriter(tmp_path / "odd.mp4", fps=Fraction(30000, 1001), width=47, height=33) as w:
        for f in frames:
            w.write(f)
    info = probe_video(tmp_path / "odd.mp4")
    assert (info.width, info.height, info.fps, info.frames) == (47, 33, Fraction(30000, 1001), 6)
    with pytest.raises(ValueError, match="frame is 10x10, the video 47x33"):
        with VideoWriter(tmp_path / "bad.mp4", fps=25, width=47, height=33) as w:
            w.write(np.zeros((10, 10, 3), np.uint8))


def test_frames_go_through_windows_when_memory_is_short(predictor, tmp_path, monkeypatch, caplog):
    import logging

    import pixelwise.engine.predictor as predictor_module

    clip = write_video(tmp_path / "clip.mp4", square_frames())
    # room for the frames' class probabilities (windows cannot spare those), not for a whole-image pass of a TB
    monkeypatch.setattr(predictor_module, "available_memory", lambda device: 2**24)
    monkeypatch.setattr(predictor_module, "inference_bytes", lambda spec, h, w: 2**40)
    caplog.set_level(logging.WARNING, logger="pixelwise")
    files = predict_video(predictor, clip, tmp_path / "out", masks="video", batch_size=4, progress=False)
    assert f"image {clip} (64x48): a whole-image pass needs about" in caplog.text
    assert "predicting it in 32x32 sliding windows" in caplog.text
    labels = [m[..., 0] for m in read_frames(files["masks"], "L")]
    for frame, label in zip(read_frames(clip), labels, strict=True):  # each frame as predict runs it, in windows
        np.testing.assert_array_equal(label, predictor.predict(frame))
    # predict's manifest says so, as for an image (a video's entry had no "inference": the plain protocol)
    from pixelwise.engine import predict

    written = predict(predictor.checkpoint, [clip], tmp_path / "listed", progress=False)
    assert (written[0]["inference"]["mode"], written[0]["inference"]["crop"]) == ("slide", 32)


@pytest.mark.parametrize("masks", ["png", "video"])
def test_a_video_that_fails_partway_leaves_no_outputs(predictor, tmp_path, monkeypatch, masks):
    import pixelwise.engine.video as video

    clip = write_video(tmp_path / "clip.mp4", square_frames())
    real = video.decode_frames

    def broken_after_five(path, mode):
        for i, frame in enumerate(real(path, mode)):
            if i == 5:
                raise DataError(f"cannot read video {path}: frame 5 is damaged")
            yield frame

    monkeypatch.setattr(video, "decode_frames", broken_after_five)
    effect = Effect.from_spec("blur=2", predictor.classes, predictor.meta["palette"], foreground="c1,c2")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="frame 5 is damaged"):
        predict_video(predictor, clip, out, masks=masks, effect=effect, batch_size=2, progress=False)
    assert [p for p in out.rglob("*") if p.is_file()] == []  # no shortened video, no first frames' masks
    monkeypatch.setattr(video, "decode_frames", real)  # an earlier run's finished video stays while a new one fails
    done = predict_video(predictor, clip, out, batch_size=2, progress=False)["overlay"]
    before = Path(done).read_bytes()
    monkeypatch.setattr(video, "decode_frames", broken_after_five)
    with pytest.raises(DataError, match="frame 5 is damaged"):
        predict_video(predictor, clip, out, batch_size=2, progress=False)
    assert Path(done).read_bytes() == before and [p.name for p in out.rglob("*") if p.is_file()] == ["clip_overlay.mp4"]
    Path(done).unlink()
    if masks == "png":  # an earlier run's file in the folder (predict --overwrite) is not this run's to remove
        (out / "masks/clip").mkdir(parents=True)
        (out / "masks/clip/notes.txt").write_text("kept")
        with pytest.raises(DataError, match="frame 5 is damaged"):
            predict_video(predictor, clip, out, masks=masks, batch_size=2, progress=False)
        assert [p.name for p in out.rglob("*") if p.is_file()] == ["notes.txt"]


def test_a_model_whose_outputs_are_not_its_classes_is_refused(predictor, tmp_path, monkeypatch):
    # a boundary-method model has one output more than classes: its argmax is not a label
    monkeypatch.setitem(predictor.meta, "model", {**predictor.meta["model"], "num_classes": 4})
    monkeypatch.setattr(predictor, "instance_method", InstanceSettings(method="boundary"))
    with pytest.raises(ConfigError) as e:
        predict_video(predictor, tmp_path / "clip.mp4", tmp_path / "out", progress=False)
    assert str(e.value) == (
        f"{tmp_path / 'clip.mp4'}: video writes each frame's class labels, and this model's 4 outputs are not its 3 "
        "classes (instances.method=boundary): predict the frames as images, which decodes them"
    )
    assert not (tmp_path / "out").exists()


def test_not_a_video_and_missing_pyav(predictor, tmp_path, monkeypatch):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n")
    with pytest.raises(DataError) as e:
        predict_video(predictor, fake, tmp_path / "out", progress=False)
    assert str(e.value) == (
        f"cannot read video {fake}: not a video PyAV can decode (Invalid data found when processing input)"
    )
    with pytest.raises(DataError) as e:
        predict_video(predictor, tmp_path / "gone.mp4", tmp_path / "out", progress=False)
    assert str(e.value) == f"video {tmp_path / 'gone.mp4'} does not exist"
    assert is_video("a/B.MOV") and is_video("x.webm") and not is_video("x.png")

    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed: import av raises ImportError
    clip = tmp_path / "clip.mp4"
    with pytest.raises(PixelwiseError) as e:
        predict_video(predictor, clip, tmp_path / "out", progress=False)
    assert str(e.value) == "video needs PyAV: pip install 'pixelwise[video]' (or pip install av)"


def frame_times(path):
    with av.open(str(path)) as c:
        return [float(f.time) for f in c.decode(video=0)]


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_a_variable_rate_video_keeps_its_frame_times(predictor, tmp_path, codec):
    """30 frames a second, then 10: each output frame at its input time (the average rate's grid moved the
    slow part's frames by up to 0.85 s, away from the audio)."""
    times = [i / 30 for i in range(8)] + [8 / 30 + i / 10 for i in range(1, 7)]
    clip = write_video(tmp_path / "vfr.mp4", square_frames(len(times)), times=times)
    assert frame_times(clip) == pytest.approx(times, abs=1e-3)
    files = predict_video(predictor, clip, tmp_path / "out", codec=codec, masks="video", progress=False)
    assert frame_times(files["overlay"]) == pytest.approx(times, abs=1e-3)
    assert frame_times(files["masks"]) == pytest.approx(times, abs=1e-3)


def test_pcm_audio_is_re_encoded_for_an_mp4(predictor, tmp_path):
    """An MKV's PCM audio: FFmpeg's mp4 muxer refuses it (at the trailer, after every frame), so it is re-encoded
    as AAC; a MOV takes it as it is."""
    clip = write_video(tmp_path / "pcm.mkv", square_frames(), codec="ffv1", audio="pcm_s16le")
    files = predict_video(predictor, clip, tmp_path / "out", progress=False)
    assert files["audio"] == "passed through (pcm_s16le re-encoded as aac)"
    assert stream_facts(files["overlay"])[:5] == (N, FPS, W, H, "aac")
    effect = Effect.from_spec("cutout", predictor.classes, predictor.meta["palette"], foreground="2")
    files = predict_video(predictor, clip, tmp_path / "mov", effect=effect, overlay_video=False, progress=False)
    assert files["audio"] == "passed through (pcm_s16le, copied)" and stream_facts(files["effect"])[4] == "pcm_s16le"


def test_a_frame_size_change_mid_stream_is_one_line(predictor, tmp_path):
    small = write_video(tmp_path / "a.ts", square_frames(4), codec="mpeg2video")
    write_video(tmp_path / "b.ts", [np.zeros((64, 96, 3), np.uint8)] * 4, codec="mpeg2video")
    joined = tmp_path / "joined.ts"  # MPEG-TS files join byte for byte
    joined.write_bytes(small.read_bytes() + (tmp_path / "b.ts").read_bytes())
    with pytest.raises(DataError) as e:
        predict_video(predictor, joined, tmp_path / "out", progress=False)
    first = str(e.value).split("frame ")[1].split(" ")[0]  # where the decoder switches (3 or 4: the join's seam)
    assert first in ("3", "4") and str(e.value) == (
        f"video {joined}: frame {first} is 96x64, the frames before it 64x48; re-encode it at one size "
        "(ffmpeg -i IN -vf scale=64:48 OUT)"
    )
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_overwriting_png_masks_removes_the_longer_videos_frames(predictor, tmp_path):
    out = tmp_path / "out"
    predict_video(predictor, write_video(tmp_path / "clip.mp4", square_frames(12)), out, masks="png", progress=False)
    (out / "masks/clip/notes.txt").write_text("kept")
    files = predict_video(
        predictor, write_video(tmp_path / "clip.mp4", square_frames(5)), out, masks="png", progress=False
    )
    assert files["frames"] == 5
    assert sorted(p.name for p in (out / "masks/clip").iterdir()) == [f"{i:06d}.png" for i in range(5)] + ["notes.txt"]


def test_an_mpeg4_fallback_takes_an_average_rate_with_a_large_denominator(tmp_path):
    fps = Fraction(1000000, 33367)  # 29.97 as some cameras record it: MPEG-4 part 2 allows denominators <= 65535
    with VideoWriter(tmp_path / "m.mp4", fps=fps, width=W, height=H, codec="mpeg4") as w:
        for i, frame in enumerate(square_frames(6)):
            w.write(frame, i / fps)
    assert len(frame_times(tmp_path / "m.mp4")) == 6
    assert frame_times(tmp_path / "m.mp4") == pytest.approx([float(i / fps) for i in range(6)], abs=1e-3)


def test_a_writer_that_cannot_finish_leaves_no_partial_file(tmp_path, monkeypatch):
    import pixelwise.data.video as video_io

    def no_rename(src, dst):
        raise OSError("read-only file system")

    monkeypatch.setattr(video_io.os, "replace", no_rename)
    with pytest.raises(OSError, match="read-only"):
        with VideoWriter(tmp_path / "v.mp4", fps=FPS, width=W, height=H) as w:
            for frame in square_frames(3):
                w.write(frame)
    assert list(tmp_path.iterdir()) == []


def test_opus_audio_is_re_encoded_for_a_mov(predictor, tmp_path):
    """A WebM's Opus audio was copied into the cutout's MOV, whose muxer refuses it ("opus only supported in MP4"):
    the whole effect video failed at its first frame."""
    clip = write_video(tmp_path / "opus.webm", square_frames(), codec="libvpx-vp9", audio="libopus", sample_rate=48000)
    effect = Effect.from_spec("cutout", predictor.classes, predictor.meta["palette"], foreground="2")
    files = predict_video(predictor, clip, tmp_path / "mov", effect=effect, overlay_video=False, progress=False)
    assert files["audio"] == "passed through (opus re-encoded as aac)" and stream_facts(files["effect"])[4] == "aac"
    files = predict_video(predictor, clip, tmp_path / "mp4", progress=False)  # an MP4 takes it as it is
    assert files["audio"] == "passed through (opus, copied)" and stream_facts(files["overlay"])[4] == "opus"


def test_a_webm_without_a_frame_count_gets_one_estimated_from_its_duration(tmp_path):
    """WebM and MKV record no frame count: the progress bar counted up with no total or time to go."""
    info = probe_video(write_video(tmp_path / "c.webm", square_frames(), codec="libvpx-vp9"))
    assert info.frames is None and info.duration == pytest.approx(N / FPS, abs=0.05)
    assert info.expected_frames == N
    mp4 = probe_video(write_video(tmp_path / "c.mp4", square_frames()))
    assert mp4.frames == mp4.expected_frames == N  # recorded: taken as it is


ZERO_FRAME_MKV = (  # an H.264 Matroska file with a video stream and no frame (written by FFmpeg's muxer)
    "GkXfo6NChoEBQveBAULygQRC84EIQoKIbWF0cm9za2FCh4EEQoWBAhhTgGcBAAAAAAAE1BFNm3Sxv4Qf/0hXTbuLU6uEFUmpZlOs"
    "gaFNu4tTq4QWVK5rU6yB8U27jFOrhBJUw2dTrIIB2+wBAAAAAAAAYgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAFUmpZsu/hKoZRpUq"
    "17GDD0JATYCNTGF2ZjYyLjEyLjEwMldBjUxhdmY2Mi4xMi4xMDJzpJA9O84SkYIdiZwcwDANzc4mRImIQI/4AAAAAAAWVK5rQOS/"
    "hP/mq3+uAQAAAAAAAIHXgQFzxYgAIAU7GfeqE5yBACK1nIN1bmSIgQCGj1ZfTVBFRzQvSVNPL0FWQ4OBASPjg4QB/KBV4IqwgUC6"
    "gTBUsoEEVe6BAOwBAAAAAAAAAgAAY6KsAWQACv/hABdnZAAKrNlEehAAAAMAEAAAAwPA8SJZYAEABmjr48siwP34+ACuAQAAAAAA"
    "AEvXgQJzxYiHOkQBFXDAfJyBACK1nIN1bmSIgQCGhUFfQUFDVqqEAUWFVYOBAuGRn4ECtYhA53AAAAAAAGJkgSBV7oEAY6KFEZBW"
    "5QASVMNnQJO/hDNbeEpzc6BjwIBnyJpFo4dFTkNPREVSRIeNTGF2ZjYyLjEyLjEwMnNzsmPAi2PFiAAgBTsZ96oTZ8ihRaOIRFVS"
    "QVRJT05Eh5MwMDowMDowMC4wMDAwMDAwMDAAc3OyY8CLY8WIhzpEARVwwHxnyKFFo4hEVVJBVElPTkSHkzAwOjAwOjAxLjAyMzAw"
    "MDAwMAAfQ7Z1Qlq/hEXThxzngQCjm4IAAIDeAgBMYXZjNjIuMjguMTAyAEIgCMEYOKOKggAVgCEQBGCMHKOKggAqgCEQBGCMHKOK"
    "ggBAgCEQBGCMHKOKggBVgCEQBGCMHKOKggBqgCEQBGCMHKOKggCAgCEQBGCMHKOKggCVgCEQBGCMHKOKggCqgCEQBGCMHKOKggDA"
    "gCEQBGCMHKOKggDVgCEQBGCMHKOKggDqgCEQBGCMHKOKggEAgCEQBGCMHKOKggEVgCEQBGCMHKOKggEqgCEQBGCMHKOKggFAgCEQ"
    "BGCMHKOKggFVgCEQBGCMHKOKggFqgCEQBGCMHKOKggGAgCEQBGCMHKOKggGVgCEQBGCMHKOKggGqgCEQBGCMHKOKggHAgCEQBGCM"
    "HKOKggHVgCEQBGCMHKOKggHqgCEQBGCMHKOKggIAgCEQBGCMHKOKggIVgCEQBGCMHKOKggIqgCEQBGCMHKOKggJAgCEQBGCMHKOK"
    "ggJVgCEQBGCMHKOKggJqgCEQBGCMHKOKggKAgCEQBGCMHKOKggKVgCEQBGCMHKOKggKqgCEQBGCMHKOKggLAgCEQBGCMHKOKggLV"
    "gCEQBGCMHKOKggLqgCEQBGCMHKOKggMAgCEQBGCMHKOKggMVgCEQBGCMHKOKggMqgCEQBGCMHKOKggNAgCEQBGCMHKOKggNVgCEQ"
    "BGCMHKOKggNqgCEQBGCMHKOKggOAgCEQBGCMHKOKggOVgCEQBGCMHKOKggOqgCEQBGCMHKOKggPAgCEQBGCMHKOKggPVgCEQBGCM"
    "HKOKggPqgCEQBGCMHA=="
)


def test_mp3_audio_is_copied_and_a_video_without_frames_is_one_line(predictor, tmp_path):
    """FFmpeg decodes MP3 as "mp3float", which no muxer lists: MP3 was always re-encoded, and from an AVI (audio
    clock of 3/125 s) the re-encode failed at frame 4. A video of no frames ended in a file-system error about the
    overlay's partial file (its writer had nothing to finish), which --skip-errors did not skip."""
    mp3 = write_video(tmp_path / "mp3.avi", square_frames(), codec="mpeg4", audio="libmp3lame", sample_rate=48000)
    files = predict_video(predictor, mp3, tmp_path / "a", progress=False)
    assert files["audio"] == "passed through (mp3, copied)"
    assert stream_facts(files["overlay"])[4] == "mp3float"  # (its decoder's name): the MP3 stream, copied
    empty = tmp_path / "empty.mkv"
    empty.write_bytes(base64.b64decode(ZERO_FRAME_MKV))
    with pytest.raises(DataError) as e:
        predict_video(predictor, empty, tmp_path / "b", progress=False)
    assert str(e.value) == f"video {empty}: no frame could be decoded"
    assert not [p for p in (tmp_path / "b").rglob("*") if p.is_file()]


def test_predicting_a_folder_into_itself_again_leaves_out_the_earlier_outputs(checkpoint, tmp_path):
    """--out equal to the input folder: a re-run took the last run's clip_overlay.mp4 as an input (and wrote
    clip_overlay_overlay.mp4); the files an earlier prediction's manifest lists are no inputs."""
    write_video(tmp_path / "clip.mp4", square_frames(4))
    for _ in range(2):
        written = predict(checkpoint, [tmp_path], tmp_path, device="cpu", overwrite=True, progress=False)
        assert [Path(w["video"]).name for w in written] == ["clip.mp4"]
    files = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert files == ["clip.mp4", "clip_overlay.mp4", "legend.png", "manifest.json"]


def test_an_input_that_an_output_would_replace_is_refused_before_any_work(checkpoint, tmp_path):
    """The user's own a_overlay.mp4 beside a.mp4, with --out that folder: it was replaced by a.mp4's overlay
    before it was read."""
    write_video(tmp_path / "a.mp4", square_frames(4))
    mine = write_video(tmp_path / "a_overlay.mp4", square_frames(6))
    before = sorted(tmp_path.rglob("*")), mine.read_bytes()
    with pytest.raises(DataError) as e:
        predict(checkpoint, [tmp_path], tmp_path, device="cpu", overwrite=True, progress=False)
    assert str(e.value) == (
        f"input {mine} is where this run writes an output of {tmp_path / 'a.mp4'}, and would be replaced: "
        "choose an --out outside the input folders"
    )
    assert (sorted(tmp_path.rglob("*")), mine.read_bytes()) == before
    earlier = tmp_path / "out"  # an earlier run's output named as an input would be removed by --overwrite
    predict(checkpoint, [tmp_path / "a.mp4"], earlier, device="cpu", video_masks="png", progress=False)
    for listed in (earlier / "a_overlay.mp4", earlier / "masks" / "a" / "000000.png"):
        with pytest.raises(DataError) as e:
            predict(checkpoint, [listed], earlier, device="cpu", overwrite=True, progress=False)
        assert str(e.value) == (
            f"input {listed} is an output of the earlier prediction in --out {earlier}, which --overwrite removes: "
            "copy it elsewhere first, or choose another --out"
        )
        assert listed.is_file()
    # our own legend, which a shell's "out/*.png" names, is left out quietly as before
    legend = earlier / "legend.png"
    assert legend.is_file() and earlier_outputs_left_out([legend], [legend], earlier) == []


def test_only_the_outputs_this_run_writes_are_guarded(tmp_path):
    """A user's a_effect.mp4 or a_masks.mkv beside a.mp4 is an input unless this run writes that file."""
    a, effect, masks = tmp_path / "a.mp4", tmp_path / "a_effect.mp4", tmp_path / "a_masks.mkv"
    check_inputs_kept([a, effect, masks], tmp_path)  # without --effect and --video-masks video: not written
    with pytest.raises(DataError, match="^input .*a_effect.mp4 is where this run writes an output of"):
        check_inputs_kept([a, effect], tmp_path, effect=True)
    with pytest.raises(DataError, match="^input .*a_masks.mkv is where this run writes an output of"):
        check_inputs_kept([a, masks], tmp_path, video_masks="video")
    # an image's output folders, and a video's masks as PNG frames (only with --video-masks png)
    overlay = tmp_path / "overlay" / "b.png"
    with pytest.raises(DataError, match="^input .*b.png is where this run writes an output of .*b.png, and would"):
        check_inputs_kept([overlay], tmp_path)
    check_inputs_kept([tmp_path / "other" / "b.png"], tmp_path)  # not an output folder
    frame = tmp_path / "masks" / "a" / "000000.png"
    check_inputs_kept([a, frame], tmp_path, video_masks="video")
    with pytest.raises(DataError, match="^input .*000000.png is where this run writes an output of .*a.mp4, and"):
        check_inputs_kept([a, frame], tmp_path, video_masks="png")


def write_late_ts(path, frames, start, audio=None, rate=16000, audio_seconds=None, level=1.0):
    """An MPEG-TS whose clock starts ``start`` seconds in (as TV recordings' do), with a tone in ``audio`` (a
    codec) from the same time, as long as the pictures or ``audio_seconds``, ``level`` times as loud as usual."""
    out = av.open(str(path), "w")
    stream = out.add_stream("mpeg2video", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    astream = out.add_stream(audio, rate=rate, layout="mono") if audio else None
    for i, frame in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        vf.pts = round(start * FPS) + i
        for packet in stream.encode(vf):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    if astream is not None:
        mux_tone(out, astream, len(frames) / FPS if audio_seconds is None else audio_seconds, start, level)
    out.close()
    return path


@pytest.mark.parametrize(("audio", "how"), [("mp2", "mp2 re-encoded as aac"), ("aac", "aac, copied")])
def test_a_video_whose_clock_starts_late_comes_out_starting_at_zero(predictor, tmp_path, audio, how):
    """A .ts recording whose timestamps start at 3600 s: the outputs began with an hour of nothing (the mask
    video's duration was 3600.48 s), the audio with them."""
    clip = write_late_ts(tmp_path / "late.ts", square_frames(), 3600, audio=audio)
    assert frame_times(clip)[0] == pytest.approx(3600)
    files = predict_video(predictor, clip, tmp_path / "out", masks="video", progress=False)
    for key in ("overlay", "masks"):
        assert frame_times(files[key]) == pytest.approx([i / FPS for i in range(N)], abs=1e-3), key
    with av.open(files["overlay"]) as c:
        assert c.duration / 1e6 < 1  # the video's and the audio's
        sound = [float(p.pts * p.time_base) for p in c.demux(audio=0) if p.pts is not None]
    # (an AAC encoder's priming samples come before 0)
    assert files["audio"] == f"passed through ({how})" and -0.05 < min(sound) < 0.1 and max(sound) < 0.5


def test_a_timestamp_jump_back_keeps_the_frames_evenly_spaced(predictor, tmp_path):
    """Two .ts files joined end to end: the second's clock starts again, and its 8 frames came out on one tick."""
    parts = [write_video(tmp_path / f"{i}.ts", square_frames(8), codec="mpeg2video").read_bytes() for i in range(2)]
    (tmp_path / "joined.ts").write_bytes(b"".join(parts))
    files = predict_video(predictor, tmp_path / "joined.ts", tmp_path / "out", masks="video", progress=False)
    for key in ("overlay", "masks"):
        assert frame_times(files[key]) == pytest.approx([i / FPS for i in range(16)], abs=1e-3), key


@pytest.mark.parametrize(("audio", "how"), [("mp2", "mp2 re-encoded as aac"), ("aac", "aac, copied")])
def test_the_audio_of_joined_files_follows_the_frames_after_the_jump_back(predictor, tmp_path, audio, how):
    """Two .ts files with audio joined end to end: the frames after the second's clock starts again follow on, but
    its audio kept the restarted times, going back in time against what was already muxed: the muxer refused them
    and the whole video failed, the audio copied or re-encoded. Now it follows on in step, without a gap."""
    parts = [write_late_ts(tmp_path / f"{i}.ts", square_frames(8), 10, audio=audio).read_bytes() for i in range(2)]
    (tmp_path / "joined.ts").write_bytes(b"".join(parts))
    files = predict_video(predictor, tmp_path / "joined.ts", tmp_path / "out", progress=False)
    assert files["audio"] == f"passed through ({how})" and files["frames"] == 16
    assert frame_times(files["overlay"]) == pytest.approx([i / FPS for i in range(16)], abs=1e-3)
    with av.open(files["overlay"]) as c:
        a = c.streams.audio[0]
        packets = [p for p in c.demux(a) if p.size]
        starts = [float(p.pts * a.time_base) for p in packets]
        ends = [float((p.pts + p.duration) * a.time_base) for p in packets]
    with av.open(files["overlay"]) as c:
        sound = sum(f.samples for f in c.decode(audio=0)) / c.streams.audio[0].codec_context.sample_rate
    assert all(p.dts < q.dts for p, q in zip(packets, packets[1:], strict=False)), [p.dts for p in packets]
    assert starts == sorted(starts) and -0.1 < starts[0] < 0.05
    # no gap, no overlap: each packet follows on where the last one ended, the second part's too
    assert all(abs(s - e) < 1e-3 for e, s in zip(ends, starts[1:], strict=False)), list(zip(starts, ends, strict=True))
    # as long as the pictures (16 frames at 25 fps), within a frame or two (the encoders' whole frames of samples)
    assert ends[-1] == pytest.approx(16 / FPS, abs=0.1)
    assert sound == pytest.approx(16 / FPS, abs=0.1)
    if audio == "mp2":  # re-encoded: from the start to the second part's end (the encoder's last frame whole)
        assert sound == pytest.approx(8 / FPS + loud_times(tmp_path / "1.ts", 10)[1], abs=0.03)


def loud_times(path, origin=0.0):
    """The times (seconds from ``origin``) of the first audio stream's samples louder than half its loudest, and
    the stream's decoded length (seconds of samples)."""
    with av.open(str(path)) as c:
        rate, pieces = c.streams.audio[0].codec_context.sample_rate, []
        for f in c.decode(audio=0):
            a = f.to_ndarray()[:1].reshape(-1)  # (one channel: mono, planar or packed)
            pieces.append((float(f.pts * f.time_base) - origin, a / 32768 if a.dtype == np.int16 else a))
    starts = [np.round((t + np.arange(len(a)) / rate) * rate) / rate for t, a in pieces]
    half = max(np.abs(a).max(initial=0) for _, a in pieces) / 2
    loud = np.concatenate([t[np.abs(a) > half] for t, (_, a) in zip(starts, pieces, strict=True)])
    return np.unique(loud), sum(len(a) for _, a in pieces) / rate


@pytest.mark.parametrize("more", [-0.2, 0.2])
@pytest.mark.parametrize(("audio", "how"), [("mp2", "mp2 re-encoded as aac"), ("aac", "aac, copied")])
def test_the_audio_after_a_join_starts_with_the_frames_after_it(predictor, tmp_path, audio, how, more):
    """The first part's audio 0.2 s shorter or longer than its pictures: the second part's audio goes where its
    frames go (N / FPS, one tick after the first part's last frame), not where the audio before it ended: after a
    gap a silence (re-encoded: the encoder takes sound without gaps), an overlap cut from the second's start. The
    first part's tone is a third as loud: the second's is the loud sound in the output."""
    parts = [
        write_late_ts(tmp_path / "0.ts", square_frames(), 10, audio=audio, audio_seconds=N / FPS + more, level=1 / 3),
        write_late_ts(tmp_path / "1.ts", square_frames(), 10, audio=audio),
    ]
    (tmp_path / "joined.ts").write_bytes(b"".join(p.read_bytes() for p in parts))
    files = predict_video(predictor, tmp_path / "joined.ts", tmp_path / "out", progress=False)
    assert files["audio"] == f"passed through ({how})" and files["frames"] == 2 * N
    assert frame_times(files["overlay"]) == pytest.approx([i / FPS for i in range(2 * N)], abs=1e-3)
    out, sound = loud_times(files["overlay"])
    second, second_sound = loud_times(parts[1], 10)  # (the second part's audio on its own clock)
    # the second part's sound ends where its times, moved on as its frames were, say
    assert out[-1] == pytest.approx(N / FPS + second[-1], abs=0.015)
    if more < 0:  # and after a silence where the first part's ended, it starts at the frames' join
        assert out[0] == pytest.approx(N / FPS + second[0], abs=0.015)
    else:  # where the first part's sound ended (the second's start under it cut, or its packets under it left out)
        first, _ = loud_times(parts[0], 10)
        assert out[0] == pytest.approx(first[-1], abs=0.04)
    if audio == "mp2":  # the whole sound: from the start to the second part's end (the encoder's last frame whole)
        assert sound == pytest.approx(N / FPS + second_sound, abs=0.03)


def test_a_frame_time_a_little_early_is_jitter_not_a_join(tmp_path):
    """A frame 1 ms before the last one's time goes one tick after it, and the rest keep their times (taken for a
    join, every later frame came out a frame late, drifting from the audio)."""
    times = [0, 0.04, 0.08, 0.079, 0.12, 0.16]
    with VideoWriter(tmp_path / "j.mp4", fps=FPS, width=W, height=H) as w:
        for frame, t in zip(square_frames(6), times, strict=True):
            w.write(frame, t)
    assert frame_times(tmp_path / "j.mp4") == pytest.approx([0, 0.04, 0.08, 0.08, 0.12, 0.16], abs=2e-3)


def test_audio_at_a_rate_aac_does_not_take_is_resampled(predictor, tmp_path):
    """PCM at 192 kHz, above AAC's 96 kHz: the encoder refused it at the first mux and the whole video failed."""
    clip = write_video(tmp_path / "pcm.mkv", square_frames(), codec="ffv1", audio="pcm_s16le", sample_rate=192000)
    files = predict_video(predictor, clip, tmp_path / "out", progress=False)
    assert (files["frames"], files["audio"]) == (N, "passed through (pcm_s16le re-encoded as aac, 192000 Hz as 48000)")
    assert stream_facts(files["overlay"]) == (N, FPS, W, H, "aac")
    with av.open(files["overlay"]) as c:
        assert c.streams.audio[0].codec_context.sample_rate == 48000


@pytest.mark.parametrize(
    ("degrees", "flips", "size", "rows", "cols"),
    [
        (0, {"hflip": True}, (48, 64), 0, 56),  # a selfie camera's mirror: came out rotated 180
        (0, {"vflip": True}, (48, 64), 40, 0),
        (180, {}, (48, 64), 40, 56),
        (-90, {}, (64, 48), 0, 40),  # a phone held upright
        (-90, {"hflip": True}, (64, 48), 0, 0),  # a transpose
        (90, {}, (64, 48), 56, 0),
    ],
)
def test_frames_come_as_their_display_matrix_shows_them(tmp_path, degrees, flips, size, rows, cols):
    """As ffmpeg shows them: a rotation and a mirror (a mirror alone was taken for a 180 turn)."""
    path = tmp_path / "m.mp4"
    frame = np.zeros((H, W, 3), np.uint8)
    frame[:8, :8] = 255  # a marker at the stored top-left
    write_video(path, [frame, frame], setup=lambda stream: stream.set_display_rotation(degrees, **flips))
    first = next(read_frames(path))
    ys, xs = np.nonzero(first[..., 0] > 128)
    assert (first.shape[:2], ys.min(), ys.max(), xs.min(), xs.max()) == (size, rows, rows + 7, cols, cols + 7)
    assert (probe_video(path).height, probe_video(path).width) == size


def test_an_anamorphic_video_keeps_its_pixel_shape(predictor, tmp_path):
    """Pixels twice as wide as high (a sample aspect ratio of 2): the outputs had square ones, shown squeezed."""
    path = tmp_path / "wide.mp4"
    write_video(path, square_frames(4), setup=lambda s: setattr(s.codec_context, "sample_aspect_ratio", Fraction(2)))
    assert probe_video(path).sample_aspect_ratio == Fraction(2)
    effect = Effect.from_spec("cutout", predictor.classes, predictor.meta["palette"], foreground="c2")
    files = predict_video(predictor, path, tmp_path / "out", masks="video", effect=effect, progress=False)
    for key in ("overlay", "effect"):  # (FFV1 takes it from each frame, which PyAV cannot set: masks are data)
        with av.open(files[key]) as c:
            assert c.streams.video[0].sample_aspect_ratio == Fraction(2), key


def write_avi_with_b_frames(path, n=30, fps=30):
    """H.264 with B-frames (libx264's default) in an AVI, as the reviewer's file: AVI keeps no presentation times, so
    the decoded frames, in display order, carry the packets' times in decode order, while their dts rise steadily."""
    try:
        av.Codec("libx264", "w")
    except (av.FFmpegError, ValueError):
        pytest.skip("PyAV's FFmpeg has no libx264 encoder (H.264 with B-frames)")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = 64, 48
        for i in range(n):
            a = np.zeros((48, 64, 3), np.uint8)
            a[:, i * 2 : i * 2 + 4] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def test_an_avi_with_b_frames_comes_out_evenly_spaced(predictor, tmp_path):
    """H.264 with B-frames in an AVI: the frames' pts go back and forth (gaps of 0.1, -0.033, 0.067, -0.1 s) and
    every other output frame was squeezed to 1/90000 s after the one before. As ffmpeg (its best effort timestamp),
    the steadily rising dts is taken where the pts is the faulty one: every frame 1/30 s after the last."""
    clip = write_avi_with_b_frames(tmp_path / "b.avi")
    with av.open(str(clip)) as c:
        pts = [f.pts for f in c.decode(video=0)]
    assert len(pts) == 30 and any(b < a for a, b in zip(pts, pts[1:], strict=False)), pts  # the file's fault
    files = predict_video(predictor, clip, tmp_path / "out", masks="video", progress=False)
    assert files["frames"] == 30
    for key in ("overlay", "masks"):
        assert frame_times(files[key]) == pytest.approx([i / 30 for i in range(30)], abs=1e-3), key


def test_the_audio_of_each_video_written_is_told(predictor, tmp_path):
    """A WebM's Opus audio is copied into the overlay's MP4 but re-encoded as AAC for the cutout's MOV: the manifest
    said "copied" of both, describing the first video written only."""
    clip = write_video(tmp_path / "opus.webm", square_frames(), codec="libvpx-vp9", audio="libopus", sample_rate=48000)
    effect = Effect.from_spec("cutout", predictor.classes, predictor.meta["palette"], foreground="2")
    files = predict_video(predictor, clip, tmp_path / "out", effect=effect, masks="video", progress=False)
    assert stream_facts(files["overlay"])[4] == "opus" and stream_facts(files["effect"])[4] == "aac"
    assert files["audio"] == "overlay: passed through (opus, copied); effect: passed through (opus re-encoded as aac)"
