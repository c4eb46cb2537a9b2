"""Video in and out with PyAV (the optional extra ``pixelwise[video]``; its wheels carry their own FFmpeg, so no
system FFmpeg is needed).

- :func:`read_frames` decodes any container PyAV reads (mp4, mov, mkv, webm, avi, ...) one frame at a time, as
  a generator: memory stays flat in the video's length. A rotation recorded by the camera (phone videos) is
  applied, so frames come upright, as :func:`pixelwise.data.read_image` applies an EXIF orientation.
- :class:`VideoWriter` encodes frames as they come: H.264 (libx264) in an .mp4 where PyAV's FFmpeg has it, else
  MPEG-4 part 2; FFV1 (lossless) grey for class-index masks in an .mkv; PNG-in-MOV (lossless RGBA) for cut-outs,
  since H.264 in MP4 has no alpha channel. With ``audio_from`` the input's audio goes along: its packets copied
  as they are when the output container takes the codec, else re-encoded as AAC; what happened is in
  :attr:`VideoWriter.audio`.

PyAV is imported on first use, so that the rest of pixelwise works without it (:func:`require_av`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import DataError, PixelwiseError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv", ".flv")
INSTALL_HINT = "pip install 'pixelwise[video]' (or pip install av)"
H264 = "libx264"
FALLBACK = "mpeg4"
# libx264: a quality target (crf) rather than a bit rate, and a preset fast enough not to cost more than the model
X264_OPTIONS = {"preset": "veryfast", "crf": "18"}
CLOCK = 90000  # output frame times in 1/90000 s (MPEG's system clock); MPEG-4 part 2 allows at most 65535 ticks/s
MPEG4_CLOCK = 60000  # a multiple of 24, 25, 30, 50 and 60 (and of 30000/1001's frame spacing)
# audio codecs an MP4 carries as they are (FFmpeg's mp4 muxer refuses PCM, which MOV and MKV take)
MP4_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"})
# and those of them FFmpeg's mov muxer refuses ("opus only supported in MP4"), re-encoded for a MOV (cutout)
MP4_ONLY_AUDIO = frozenset({"opus", "flac"})
MPEG4_BITS_PER_PIXEL = 0.25  # about 1.3 Mbit/s at 480x360, 30 fps: no visible blocks on overlays


def require_av() -> ModuleType:
    """The ``av`` module, or a one-line PixelwiseError saying how to install it."""
    try:
        import av
    except ImportError:
        raise PixelwiseError(f"video needs PyAV: {INSTALL_HINT}") from None
    return av


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a video by its extension (:data:`VIDEO_EXTENSIONS`)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class VideoInfo:
    """What a video's container says of its first video stream (sizes are upright, after any rotation)."""

    path: str
    width: int
    height: int
    fps: Fraction
    frames: int | None  # as the container records it; None when it does not (some mkv/webm)
    codec: str
    rotation: int
    audio: str | None  # the first audio stream's codec, None without audio
    duration: float | None = None  # seconds, as the stream or the container records it
    sample_aspect_ratio: Fraction | None = None  # a pixel's width / height when not 1 (anamorphic), upright

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def expected_frames(self) -> int | None:
        """The recorded frame count, else the duration times the rate (an estimate, for a progress bar)."""
        if self.frames:
            return self.frames
        return round(self.duration * self.fps) if self.duration else None


def _open_input(path: Path) -> Any:
    av = require_av()
    if not path.is_file():
        raise DataError(f"video {path} does not exist")
    try:
        container = av.open(str(path), "r")
    except av.FFmpegError as e:
        raise DataError(f"cannot read video {path}: not a video PyAV can decode ({_reason(e)})") from None
    if not container.streams.video:
        container.close()
        raise DataError(f"cannot read video {path}: it has no video stream")
    return container


def _reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return str(text).splitlines()[0] if text else type(e).__name__


def _rate(stream: Any) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else Fraction(25)  # no rate recorded (rare): FFmpeg's own default


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """The size, frame rate, frame count, codec and audio of a video, from its header (decodes one frame only
    to learn the rotation)."""
    path = Path(path)
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        rotation = 0
        try:
            first = next(container.decode(stream), None)
            rotation = int(getattr(first, "rotation", 0) or 0) % 360 if first is not None else 0
        except require_av().FFmpegError:
            pass  # read_frames reports a broken stream with its frame number
        w, h = stream.codec_context.width, stream.codec_context.height
        sar = Fraction(stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio or 1)
        if rotation in (90, 270):
            w, h, sar = h, w, 1 / sar if sar else sar
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = container.duration / 1_000_000 if container.duration else None  # microseconds
        name = stream.codec_context.name
        return VideoInfo(
            str(path),
            w,
            h,
            _rate(stream),
            stream.frames or None,
            name,
            rotation,
            audio,
            duration,
            sar if sar != 1 else None,
        )
    finally:
        container.close()


def _display_matrix(frame: Any) -> np.ndarray | None:
    """The frame's display matrix ``[a, b, c, d]`` (its 2 x 2 part, 16.16 fixed point), None without one."""
    try:
        data = frame.side_data.get("DISPLAYMATRIX")
    except (AttributeError, KeyError, ValueError, TypeError):  # an older PyAV
        return None
    return None if data is None else np.frombuffer(bytes(data), np.int32)[[0, 1, 3, 4]]


def _upright(frame: Any, array: np.ndarray) -> np.ndarray:
    """The frame as ffmpeg shows it (fftools' autorotate): FFmpeg's rotation is the counter-clockwise angle to
    show it upright, and the display matrix's signs say whether it is mirrored too (a selfie camera's); a mirror
    alone reads as a rotation of 180, and came out upside down."""
    m = _display_matrix(frame)
    turns = round(-int(getattr(frame, "rotation", 0) or 0) / 90) % 4  # clockwise quarter turns
    if turns == 1:  # c > 0: a transpose (rotated and mirrored)
        array = array.swapaxes(0, 1) if m is not None and m[2] > 0 else np.rot90(array, -1)
    elif turns == 3:  # c < 0: the other diagonal's
        array = array.swapaxes(0, 1)[::-1, ::-1] if m is not None and m[2] < 0 else np.rot90(array, 1)
    else:  # 180: a mirror across (a < 0) and/or one down (d < 0); none of either without a matrix
        across = turns == 2 if m is None else m[0] < 0
        down = turns == 2 if m is None else m[3] < 0
        array = array[:: -1 if down else 1, :: -1 if across else 1]
    return np.ascontiguousarray(array)


LOOKAHEAD_FRAMES = 32
"""How many frames :func:`decode_frames` reads the timestamps of first, to tell a faulty pts from its start."""


@dataclass
class _Timestamps:
    """What :func:`_best_effort_time` has seen of a stream's frames so far."""

    faulty_pts: int = 0  # how often the pts, and the dts, did not go forward
    faulty_dts: int = 0
    last_pts: int | None = None
    last_dts: int | None = None
    seconds: float | None = None  # the time given to the last frame


def _best_effort_time(seen: _Timestamps, frame: Any, step: float, pts_faulty: bool | None = None) -> float | None:
    """A decoded frame's time in seconds: its pts, unless the pts is the faulty one of its pts and dts; then its
    dts, or without one the last frame's time plus ``step`` (its duration, else 1 / fps).

    Why: in an AVI, which records no presentation times, H.264 with B-frames decodes in display order, but each
    frame's pts is a packet's in decode order (gaps of 0.1, -0.033, 0.067, -0.1 s), while its dts rises steadily;
    every frame timed before the last went one tick after it (a 1/90000 s frame, every other one). FFmpeg's best
    effort timestamp (libavcodec's guess_correct_pts) takes the same course: it counts how often each of pts and
    dts failed to go forward so far, and takes the dts while the pts failed more often. In a well-formed video the
    pts never goes back more often than the dts (both do once where .ts files are joined), so its times stay as
    they were. ``pts_faulty``: the verdict where it is known beforehand (:func:`_pts_faulty_from_the_start`), else
    the counts so far give it."""
    pts, dts, base = frame.pts, frame.dts, frame.time_base
    if base is None:  # (no clock to read either by)
        return frame.time
    if dts is not None:
        seen.faulty_dts += seen.last_dts is not None and dts <= seen.last_dts
    if pts is not None:
        seen.faulty_pts += seen.last_pts is not None and pts <= seen.last_pts
    seen.last_dts = dts if dts is not None else pts if pts is not None else seen.last_dts
    seen.last_pts = pts if pts is not None else dts if dts is not None else seen.last_pts
    if pts_faulty is None:
        pts_faulty = seen.faulty_pts > seen.faulty_dts
    if pts is not None and (not pts_faulty or (dts is None and seen.seconds is None)):
        seconds: float | None = float(pts * base)
    elif dts is not None:
        seconds = float(dts * base)
    elif seen.seconds is not None:  # the decoder's last frames, flushed, have no dts
        seconds = seen.seconds + (float(frame.duration * base) if frame.duration else step)
    else:
        seconds = None
    seen.seconds = seconds
    return seconds


def _pts_faulty_from_the_start(path: Path) -> tuple[int, bool]:
    """(frames read, whether their pts is the faulty one): the first :data:`LOOKAHEAD_FRAMES` frames decoded once
    for their timestamps only. Counted as the frames come, the fault shows at the third frame of an AVI's
    B-frames, when the second had already taken a pts 3 frames ahead (and the third, its dts, one tick after)."""
    av = require_av()
    container = _open_input(path)
    seen, count = _Timestamps(), 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # as decode_frames: a frame's dts may depend on the decoder's threads
        for frame in container.decode(stream):
            _best_effort_time(seen, frame, 0.0)
            count += 1
            if count == LOOKAHEAD_FRAMES:
                break
    except av.FFmpegError:
        pass  # decode_frames says where the video is broken
    finally:
        container.close()
    return count, seen.faulty_pts > seen.faulty_dts


def decode_frames(path: str | os.PathLike, mode: str = "RGB") -> Iterator[tuple[float | None, np.ndarray]]:
    """``(time in seconds, frame)`` for each frame of ``path`` in display order: ``H x W x 3`` uint8 for
    ``mode="RGB"``, ``H x W x 1`` for ``"L"``. A generator: one decoded frame at a time in memory. The times are
    FFmpeg's best effort (:func:`_best_effort_time`): the pts, or the dts where the pts is faulty (B-frames in an
    AVI), told from the start by reading the first frames' timestamps once first."""
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    av = require_av()
    path = Path(path)
    container = _open_input(path)
    fmt = "rgb24" if mode == "RGB" else "gray"
    index = 0
    try:
        stream = container.streams.video[0]
        step = 1 / float(_rate(stream))
        looked_ahead, pts_faulty = _pts_faulty_from_the_start(path)
        seen = _Timestamps()
        stream.thread_type = "AUTO"  # frame and slice threads: decoding keeps up with the model
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except av.FFmpegError as e:
                raise DataError(f"cannot decode video {path} at frame {index}: {_reason(e)}") from None
            array = frame.to_ndarray(format=fmt)
            if array.ndim == 2:
                array = array[..., None]
            array = _upright(frame, array)
            if index == 0:
                size = array.shape[:2]
            elif array.shape[:2] != size:
                raise DataError(
                    f"video {path}: frame {index} is {array.shape[1]}x{array.shape[0]}, the frames before it "
                    f"{size[1]}x{size[0]}; re-encode it at one size (ffmpeg -i IN -vf scale={size[1]}:{size[0]} OUT)"
                )
            yield _best_effort_time(seen, frame, step, pts_faulty if index < looked_ahead else None), array
            index += 1
    finally:
        container.close()


def read_frames(path: str | os.PathLike, mode: str = "RGB") -> Iterator[np.ndarray]:
    """The frames of a video, one at a time (:func:`decode_frames` without the times)."""
    for _, frame in decode_frames(path, mode):
        yield frame


def choose_codec(codec: str = "auto") -> str:
    """``auto``: H.264 (libx264) where PyAV's FFmpeg has the encoder (PyPI's wheels do), else MPEG-4 part 2,
    which every FFmpeg build has; any other name is checked to exist."""
    av = require_av()
    names = (H264, FALLBACK) if codec == "auto" else (codec,)
    for name in names:
        try:
            av.Codec(name, "w")
            return name
        except (av.FFmpegError, ValueError):
            continue
    raise PixelwiseError(f"video codec {codec!r} is not in PyAV's FFmpeg build: use auto, {H264} or {FALLBACK}")


JOIN_JUMP_FRAMES = 3
"""A frame time this many frames before the last one's starts a new segment (joined files), not jitter."""


class VideoWriter:
    """Frames encoded into ``path`` as they are written (``with VideoWriter(...) as w: w.write(frame)``).

    ``kind``: ``"rgb"`` (H.264/MPEG-4 video, :func:`choose_codec`; frames ``H x W x 3`` uint8), ``"mask"``
    (lossless FFV1 grey, frames ``H x W`` uint8 class indices; use an .mkv) or ``"rgba"`` (lossless PNG-in-MOV
    with alpha, frames ``H x W x 4``; use a .mov). ``fps`` is the (average) frame rate; a frame's ``time``
    (seconds, the input's timestamp) is kept to 1/90000 s (1/60000 s for MPEG-4 part 2), so the output keeps a
    variable-rate input's timing and stays in step with passed-through audio; without times frames are spaced
    1 / fps apart, counted from the first frame's time. ``audio_from``: a video whose first audio stream to carry
    along (``rgb`` and ``rgba`` only). ``sample_aspect_ratio``: a pixel's width / height (an anamorphic input's)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fps: Fraction | float,
        width: int,
        height: int,
        kind: str = "rgb",
        codec: str = "auto",
        audio_from: str | os.PathLike | None = None,
        sample_aspect_ratio: Fraction | None = None,
    ) -> None:
        av = require_av()
        if kind not in ("rgb", "mask", "rgba"):
            raise ValueError(f"kind must be rgb, mask or rgba, got {kind!r}")
        self.path, self.kind, self.width, self.height = Path(path), kind, width, height
        self.fps = Fraction(fps).limit_denominator(1001000)
        self.frames = 0
        self._last_pts = -1
        # the input's first frame time (output times count from it) and what a jump back in time has added since
        self._origin: float | None = None
        self._shift, self._last_seconds = 0.0, 0.0
        # encoded beside its name and renamed into place when finished: a killed run leaves no video that looks
        # whole but is not, and an earlier one (predict --overwrite) stays until the new one is done
        self.partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.finished = False
        self.container = av.open(str(self.partial), "w")
        try:
            self.codec = {"rgb": choose_codec(codec), "mask": "ffv1", "rgba": "png"}[kind]
            # MPEG-4 part 2 allows rates with denominators up to 65535 (an average such as 1000000/33367 fails)
            rate = self.fps.limit_denominator(65535) if self.codec == FALLBACK else self.fps
            stream = self.container.add_stream(self.codec, rate=rate)
            stream.width, stream.height = width, height
            if sample_aspect_ratio:  # an anamorphic input's: its pixels are not square, nor are the outputs'
                stream.codec_context.sample_aspect_ratio = Fraction(sample_aspect_ratio)
            # the frames' clock: fine enough to keep a variable-rate input's times (phones record those), with the
            # average rate only the encoder's hint; MPEG-4 part 2 takes at most 65535 ticks a second
            self._time_base = Fraction(1, MPEG4_CLOCK if self.codec == FALLBACK else CLOCK)
            stream.time_base = stream.codec_context.time_base = self._time_base
            stream.pix_fmt, self._frame_format = self._formats()
            if self.codec == H264:
                stream.options = dict(X264_OPTIONS)
            elif self.codec == FALLBACK:
                stream.bit_rate = int(MPEG4_BITS_PER_PIXEL * width * height * float(self.fps))
            self.stream = stream
            self.audio = "none (the input has no audio)" if audio_from is not None else "none"
            self._audio: _AudioCarrier | None = None
            if audio_from is not None and kind != "mask":
                join_jump = JOIN_JUMP_FRAMES / float(self.fps)
                self._audio = _AudioCarrier.open(Path(audio_from), self.container, join_jump)
                if self._audio is not None:
                    self.audio = self._audio.description
        except BaseException:
            self.container.close()
            self.partial.unlink(missing_ok=True)
            raise

    def _formats(self) -> tuple[str, str]:
        """(the stream's pixel format, the frames' array format)."""
        if self.kind == "mask":
            return "gray", "gray"
        if self.kind == "rgba":
            return "rgba", "rgba"
        if self.codec == H264 and (self.width % 2 or self.height % 2):
            # 4:2:0 needs even sizes; 4:4:4 keeps the input's exact size (some players only play 4:2:0)
            log.warning("%s: odd size %dx%d, encoded as H.264 4:4:4", self.path, self.width, self.height)
            return "yuv444p", "rgb24"
        return "yuv420p", "rgb24"

    def write(self, frame: np.ndarray, time: float | None = None) -> None:
        """Encode one frame (and mux the input's audio up to its time)."""
        av = require_av()
        expected = (self.height, self.width)
        if frame.shape[:2] != expected:
            raise ValueError(f"frame is {frame.shape[1]}x{frame.shape[0]}, the video {self.width}x{self.height}")
        if self.kind == "mask" and frame.ndim == 3:
            frame = frame[..., 0]
        seconds = self.frames / self.fps if time is None else self._seconds(time)
        pts = max(self._last_pts + 1, round(seconds / self._time_base))
        self._last_pts = pts
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=self._frame_format)
        vf.pts = pts
        vf.time_base = self._time_base
        try:
            if self._audio is not None:
                self._audio.mux_until(float(pts * self._time_base))
            for packet in self.stream.encode(vf):
                self.container.mux(packet)
        except av.FFmpegError as e:
            raise DataError(f"cannot write video {self.path} at frame {self.frames}: {_reason(e)}") from None
        self.frames += 1

    def _seconds(self, time: float) -> float:
        """An input frame time as the output's: counted from the first frame (a TV recording's clock starts hours
        in: the outputs began with that long a blank, the audio moved alike), and after a jump back (.ts files
        joined) following on 1 / fps later (the rest had come out on one tick). A step back of a frame or so is
        jitter, not a join: that frame goes one tick after the last, as before, and the rest keep their times. The
        audio is moved on at a join as the frames are (its times had gone back: the muxer refused them)."""
        if self._origin is None:
            self._origin = time
            if self._audio is not None:
                self._audio.offset = time
        seconds = time - self._origin + self._shift
        if self.frames and seconds < self._last_seconds - JOIN_JUMP_FRAMES / float(self.fps):
            self._shift += self._last_seconds + 1 / float(self.fps) - seconds
            seconds = self._last_seconds + 1 / float(self.fps)
            if self._audio is not None:
                self._audio.join(self._shift)
        self._last_seconds = max(seconds, self._last_seconds)
        return seconds

    def close(self) -> None:
        """Flush the encoder (and the rest of the audio) and finish the file."""
        av = require_av()
        try:
            try:
                for packet in self.stream.encode(None):
                    self.container.mux(packet)
                if self._audio is not None:
                    self._audio.finish()
            finally:
                if self._audio is not None:
                    self._audio.close()
                self.container.close()
            os.replace(self.partial, self.path)
        except BaseException as e:
            self.partial.unlink(missing_ok=True)  # no half-finished file left beside the name
            if isinstance(e, av.FFmpegError):
                raise DataError(f"cannot finish video {self.path}: {_reason(e)}") from None
            raise
        self.finished = True

    def discard(self) -> None:
        """Stop after an error: close what is open and remove this writer's file (the part written, or the
        finished video that no manifest will list)."""
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - the first error is the one to report
            log.debug("closing %s after an error failed too", self.path, exc_info=True)
        if self._audio is not None:
            try:
                self._audio.close()
            except Exception:  # noqa: BLE001 - as above
                log.debug("closing the audio source of %s failed", self.path, exc_info=True)
        self.partial.unlink(missing_ok=True)
        if self.finished:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if error is None:
            self.close()
        else:  # do not hide the error behind one from flushing a half-written file
            self.discard()


def _codec_name(stream: Any) -> str:
    """An audio stream's codec: its decoder's name, except FFmpeg's "mp3float" for MP3 (which no muxer lists)."""
    name = stream.codec_context.name
    return {"mp3float": "mp3"}.get(name, name)


def _seconds_of(item: Any) -> tuple[float, float] | None:
    """(start, duration) of a packet or an audio frame in seconds on the input's clock; None without a time."""
    if item.pts is None or item.time_base is None:
        return None
    if isinstance(item, require_av().AudioFrame):
        duration = item.samples / item.sample_rate if item.sample_rate else 0.0
    else:
        duration = float(item.duration * item.time_base) if item.duration else 0.0
    return float(item.pts * item.time_base), duration


class _AudioClock:
    """Where one sequence of audio items (the packets read, or the frames decoded from them) goes on the output's
    clock: moved back by the video's first frame time, and after a jump back in time (.ts files joined; the
    audio's own jump, seen as the frames' is) moved on as the video's frames were at that join (their
    :meth:`_AudioCarrier.join`), keeping the pictures and sound in step; with no join of the frames' to go by,
    following on where the audio before it ended. Items before the output's start are dropped, and so is one
    that lies mostly under the audio before it (what a part's audio ran past its pictures): the times only go
    forward (the muxer refuses times that go back). With ``overlaps`` an item is placed where its time says, for
    the caller to fit (decoded frames, cut to the sample)."""

    def __init__(self, carrier: _AudioCarrier, overlaps: bool = False) -> None:
        self.carrier, self.overlaps = carrier, overlaps
        self.segment, self.shift = 0, 0.0  # which part of a joined input, and the seconds added to its times
        self.last: float | None = None  # the input time of the last item
        self.end: float | None = None  # where the last item kept ends on the output's clock

    def begins_part(self, start: float) -> bool:
        """Whether an item at this input time is the first after a jump back (the next joined part's)."""
        return self.last is not None and start < self.last - self.carrier.join_jump

    def shift_for(self, start: float) -> float:
        """The seconds added to an item's input time (less the offset) to place it (without placing it)."""
        if not self.begins_part(start):
            return self.shift
        shifts = self.carrier.shifts
        if self.segment + 1 < len(shifts):
            return shifts[self.segment + 1]
        return (self.end or 0.0) - (start - self.carrier.offset)

    def place(self, start: float, duration: float) -> float | None:
        """The item's start on the output's clock (seconds), None for one to drop."""
        shift = self.shift_for(start)
        if self.begins_part(start):
            self.segment += 1
        self.shift, self.last = shift, start
        out = start - self.carrier.offset + shift
        if self.segment == 0 and self.carrier.offset and out < 0:
            return None  # before the first video frame: before the output's start
        if self.end is not None and not self.overlaps and self.end - out > duration / 2 + 1e-6:
            return None  # mostly under the audio before it: one a little under keeps its time (no drift)
        self.end = out + duration if self.end is None else max(self.end, out + duration)
        return out


class _AudioCarrier:
    """The first audio stream of an input, read through a second handle on the file and muxed in step with the
    video being written (so nothing piles up in memory): packets copied when the output container takes the
    codec, else decoded and re-encoded as AAC."""

    def __init__(self, source: Any, stream: Any, output: Any, copy: bool, join_jump: float = 0.12) -> None:
        self.source, self.in_stream, self.output, self.copy = source, stream, output, copy
        self.join_jump = join_jump  # seconds: a time this far before the last one's is a join (as the video's)
        name = _codec_name(stream)
        if copy:
            self.out_stream = output.add_stream_from_template(stream)
            self.description = f"passed through ({name}, copied)"
        else:
            rate = stream.codec_context.sample_rate or 48000
            # AAC takes 7350..96000 Hz, some rates only: another (PCM at 192 kHz) failed the whole video at its first
            # mux; PyAV's encoder resamples the frames to the stream's rate
            taken = rate in (require_av().Codec("aac", "w").audio_rates or [rate])
            self.out_stream = output.add_stream("aac", rate=rate if taken else 48000)
            self.description = f"passed through ({name} re-encoded as aac{'' if taken else f', {rate} Hz as 48000'})"
        self.packets = source.demux(stream)
        self.offset = 0.0  # seconds: the video's first frame time, which the output's clock starts from
        self.shifts = [0.0]  # seconds the video's frames were moved on by, from the start and from each join on
        self._packet_clock, self._frame_clock = _AudioClock(self), _AudioClock(self, overlaps=True)
        self._last_dts: int | None = None  # (the copied packets', in the input stream's time base)
        self._sample: int | None = None  # (the re-encoded audio's next sample, counted on the output's clock)
        self.pending: Any = None
        self.done = False

    @classmethod
    def open(cls, path: Path, output: Any, join_jump: float = 0.12) -> _AudioCarrier | None:
        av = require_av()
        try:
            source = av.open(str(path), "r")
        except av.FFmpegError:
            return None
        if not source.streams.audio:
            source.close()
            return None
        stream = source.streams.audio[0]
        name = _codec_name(stream)
        mov = output.format.name == "mov"
        copy = name in output.supported_codecs and (name not in MP4_ONLY_AUDIO if mov else name in MP4_AUDIO)
        try:
            return cls(source, stream, output, copy, join_jump)
        except (av.FFmpegError, ValueError) as e:
            log.warning("%s: audio dropped (%s)", path, _reason(e))
            source.close()
            return None

    def _next(self) -> Any:
        for packet in self.packets:
            if packet.size:  # demux ends with an empty flushing packet
                return packet
        self.done = True
        return None

    def join(self, shift: float) -> None:
        """The video's frames jumped back in time (files joined) and were moved on: from now on by ``shift`` seconds
        in all. The audio's next jump back is that join's, its later packets moved on alike."""
        self.shifts.append(shift)

    def mux_until(self, seconds: float | None) -> None:
        """Mux the audio packets that start before ``seconds`` (all that are left for None)."""
        while not self.done:
            packet = self.pending or self._next()
            self.pending = None
            if packet is None:
                break
            times = _seconds_of(packet)
            if seconds is not None and times is not None:
                clock = self._packet_clock
                if clock.begins_part(times[0]) and clock.segment + 1 >= len(self.shifts):
                    self.pending = packet  # the audio's join came before the frames': it waits for theirs
                    break
                if times[0] - self.offset + clock.shift_for(times[0]) >= seconds:
                    self.pending = packet
                    break
            self._mux(packet, times)

    def _mux(self, packet: Any, times: tuple[float, float] | None) -> None:
        out = None if times is None else self._packet_clock.place(*times)
        if self.copy:
            if times is not None:
                if out is None:
                    return
                self._move(packet, out)
            if packet.dts is not None:  # (a time going back, even by a tick, fails the muxer)
                if self._last_dts is not None and packet.dts <= self._last_dts:
                    step = self._last_dts + 1 - packet.dts
                    packet.dts += step
                    if packet.pts is not None:
                        packet.pts += step
                self._last_dts = packet.dts
            packet.stream = self.out_stream
            self.output.mux(packet)
            return
        for frame in packet.decode():
            times = _seconds_of(frame)
            if times is not None and frame.sample_rate:
                out = self._frame_clock.place(*times)
                if out is None:
                    continue
                frames = self._fit(frame, round(out * frame.sample_rate))
            else:
                frames = [frame]
            for fitted in frames:
                for encoded in self.out_stream.encode(fitted):
                    self.output.mux(encoded)

    def _fit(self, frame: Any, start: int) -> list[Any]:
        """A decoded frame that should start at sample ``start`` of the output, as frames that go on from the last
        one's end: silence before it where the audio left a gap, its first samples cut where it starts before that
        end (by more than 10 ms; less is taken up, the error never adding up). The encoder gets sound without gaps
        or overlaps, its times counted in samples."""
        av, rate = require_av(), frame.sample_rate
        if self._sample is None:
            self._sample = start
        gap, fits = start - self._sample, [frame]
        if abs(gap) > rate // 100:
            samples = frame.to_ndarray()
            per = samples.shape[1] // frame.samples  # (packed formats interleave the channels)
            if gap > 0:
                silence = np.full((samples.shape[0], gap * per), 128 if samples.dtype == np.uint8 else 0, samples.dtype)
                fits = [silence, samples]
            elif -gap >= frame.samples:
                return []
            else:
                fits = [samples[:, -gap * per :]]
            fits = [
                av.AudioFrame.from_ndarray(np.ascontiguousarray(a), format=frame.format.name, layout=frame.layout.name)
                for a in fits
            ]
        for fit in fits:
            fit.sample_rate, fit.time_base, fit.pts = rate, Fraction(1, rate), self._sample
            self._sample += fit.samples
        return fits

    @staticmethod
    def _move(item: Any, seconds: float) -> None:
        """A packet or frame (its decoding time too) moved to start at ``seconds`` on the output's clock."""
        ticks = round(seconds / item.time_base) - item.pts
        if getattr(item, "dts", None) is not None:
            item.dts += ticks
        item.pts += ticks

    def finish(self) -> None:
        self.mux_until(None)
        if not self.copy:
            for out in self.out_stream.encode(None):
                self.output.mux(out)

    def close(self) -> None:
        self.source.close()
