"""Video I/O: H.264 round trips, 3 FPS resampling (paper 4.1), crops, errors, GIF."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from mindvideo.data.video import (
    VideoInfo,
    iter_video_frames,
    read_video,
    video_info,
    write_gif,
    write_video,
)
from mindvideo.utils import UserError


def smooth_clip(n: int, height: int, width: int) -> np.ndarray:
    """``[n, height, width, 3]`` uint8: soft colour gradients drifting over time."""
    t = np.arange(n)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    channels = [
        128 + 90 * np.sin(np.pi * (x / width + t / 20)),
        128 + 90 * np.cos(np.pi * (y / height - t / 30)),
        128 + 60 * np.sin(np.pi * (x + y) / (width + height)),
    ]
    return np.stack(np.broadcast_arrays(*channels, t), -1)[..., :3].astype(np.uint8)


def numbered_clip(n: int, size: int = 32) -> np.ndarray:
    """Frame k is flat grey with brightness 16 + 4k, so a decoded frame gives back k."""
    assert 16 + 4 * (n - 1) <= 235
    levels = (16 + 4 * np.arange(n)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, size, size, 3)).copy()


def frame_numbers(frames: np.ndarray) -> list[int]:
    return [round((float(f.mean()) - 16) / 4) for f in frames]


def test_round_trip_shape_fps_and_content(tmp_path):
    clip = smooth_clip(45, 48, 64)
    path = write_video(tmp_path / "clip.mp4", clip, fps=30)
    assert path == tmp_path / "clip.mp4"
    assert video_info(path) == VideoInfo(fps=30.0, n_frames=45, width=64, height=48, duration_s=1.5)
    decoded = read_video(path)
    assert decoded.shape == (45, 48, 64, 3) and decoded.dtype == np.uint8
    # crf 18 on smooth content: about one grey level off on average.
    assert np.abs(decoded.astype(int) - clip).mean() < 2.0
    streamed = list(iter_video_frames(path))
    assert len(streamed) == 45 and streamed[0].shape == (48, 64, 3)
    np.testing.assert_array_equal(np.stack(streamed), decoded)
    # Written atomically: no temporary file is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_write_streams_chunks(tmp_path):
    clip = smooth_clip(40, 64, 64)
    chunks = (clip[i : i + 7] for i in range(0, 40, 7))  # a generator, uneven chunks
    path = write_video(tmp_path / "chunks.mp4", chunks, fps=30)
    assert video_info(path).n_frames == 40
    assert np.abs(read_video(path).astype(int) - clip).mean() < 2.0


def test_resample_30_to_3_fps_takes_every_tenth_frame(tmp_path):
    path = write_video(tmp_path / "numbered.mp4", numbered_clip(50), fps=30)
    assert frame_numbers(read_video(path)) == list(range(50))
    assert frame_numbers(read_video(path, fps=3)) == [0, 10, 20, 30, 40]
    # A window: output times 0.5, 0.8333, 1.1667 s show frames 15, 25, 35.
    window = read_video(path, fps=3, start_s=0.5, duration_s=1.0)
    assert frame_numbers(window) == [15, 25, 35]
    # Upsampling repeats the frame on screen: 60 FPS shows each frame twice.
    assert frame_numbers(read_video(path, fps=60, duration_s=0.1)) == [0, 0, 1, 1, 2, 2]
    # Without fps, a window keeps the frames whose onset lies inside it.
    assert frame_numbers(read_video(path, start_s=1.0, duration_s=0.2)) == [30, 31, 32, 33, 34, 35]


def test_resize_short_side_and_center_crop(tmp_path):
    # Left third red, middle green, right third blue: the square crop keeps the middle.
    clip = np.zeros((6, 40, 120, 3), np.uint8)
    clip[:, :, :40, 0] = 255
    clip[:, :, 40:80, 1] = 255
    clip[:, :, 80:, 2] = 255
    path = write_video(tmp_path / "wide.mp4", clip, fps=30)
    out = read_video(path, size=16)
    assert out.shape == (6, 16, 16, 3)
    assert out[..., 1].mean() > 200 and out[..., 0].mean() < 40 and out[..., 2].mean() < 40
    assert read_video(path, size=64).shape == (6, 64, 64, 3)  # enlarging works too


def test_odd_size_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((3, 31, 32, 3), np.uint8), fps=30)
    assert not list(tmp_path.iterdir())
    with pytest.raises(UserError, match="uint8"):
        write_video(tmp_path / "f.mp4", np.zeros((3, 32, 32, 3), np.float32), fps=30)
    chunks = [np.zeros((3, 32, 32, 3), np.uint8), np.zeros((3, 16, 16, 3), np.uint8)]
    with pytest.raises(UserError, match="frame size changed"):
        write_video(tmp_path / "sizes.mp4", chunks, fps=30)
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind


def test_missing_file_is_a_user_error_naming_it(tmp_path):
    missing = tmp_path / "seg7.mp4"
    for call in (video_info, read_video, lambda p: list(iter_video_frames(p))):
        with pytest.raises(UserError, match=r"seg7\.mp4"):
            call(missing)


def test_truncated_mp4_is_a_user_error(tmp_path):
    path = write_video(tmp_path / "full.mp4", smooth_clip(60, 32, 32), fps=30)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the index (moov) at the end is lost
    with pytest.raises(UserError, match=r"cut\.mp4.*truncated"):
        read_video(cut)
    with pytest.raises(UserError, match=r"cut\.mp4"):
        video_info(cut)


def test_mp4_cut_inside_its_frames_is_a_user_error(tmp_path):
    # With the index first (faststart), a cut file opens but decodes fewer frames than its
    # header claims: that must fail too, not return a shorter video.
    clip = np.random.default_rng(0).integers(0, 255, (60, 32, 32, 3), dtype=np.uint8)
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for frame in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    assert video_info(cut).n_frames == 60  # the header still claims every frame
    with pytest.raises(UserError, match=r"cut\.mp4 ends after .* truncated"):
        read_video(cut, fps=3)
    with pytest.raises(UserError, match=r"cut\.mp4"):
        list(iter_video_frames(cut))


def test_not_a_video_is_a_user_error(tmp_path):
    junk = tmp_path / "notes.mp4"
    junk.write_text("not a video" * 50)
    with pytest.raises(UserError, match=r"notes\.mp4"):
        read_video(junk)


def test_write_gif_loops_with_all_frames(tmp_path):
    clip = smooth_clip(12, 24, 32)
    path = write_gif(tmp_path / "recon.gif", iter([clip[:5], clip[5:]]), fps=10)
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == 12
        assert gif.size == (32, 24)
        assert gif.info["loop"] == 0
        assert gif.info["duration"] == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recon.gif"]


def _stream(path):
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(video=0) if p.size]


@pytest.mark.parametrize(("size", "threads"), [(32, 1), (256, 4)])
def test_same_frames_give_the_same_stream_on_any_machine(tmp_path, size, threads):
    """x264 runs its CPU-independent code with a fixed thread count (its output depends on
    both), which the options line it writes into the stream records."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (45, size // 8, size // 8, 3), dtype=np.uint8)
    frames = np.repeat(np.repeat(noise, 8, 1), 8, 2) // 2 + smooth_clip(45, size, size) // 2
    streams = [_stream(write_video(tmp_path / f"{k}.mp4", frames, fps=30)) for k in range(3)]
    assert streams[0] == streams[1] == streams[2]
    options = streams[0][0]
    assert f" threads={threads} ".encode() in options
