"""Frame captions: BLIP from a local folder, the content-hash cache, caption augmentation."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from helpers.blip import WORDS

from mindvideo.data.captions import (
    STOP_WORDS,
    BlipCaptioner,
    CaptionAugmenter,
    caption_frames,
    load_lexicon,
)
from mindvideo.utils import UserError


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """10 distinct random frames, uint8 [10, 40, 40, 3]."""
    return np.random.default_rng(0).integers(0, 256, (10, 40, 40, 3), dtype=np.uint8)


def load(folder: Path, **kwargs) -> BlipCaptioner:
    kwargs.setdefault("max_new_tokens", 6)
    return BlipCaptioner.from_pretrained(folder, device="cpu", **kwargs)


def count_generate(captioner: BlipCaptioner, fail_on_call: int | None = None) -> list[int]:
    """Wrap the real model's generate: record the batch size of each call, optionally fail."""
    calls: list[int] = []
    generate = captioner.model.generate

    def counting(*args, **kwargs):
        if fail_on_call is not None and len(calls) + 1 == fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(int(kwargs["pixel_values"].shape[0]))
        return generate(*args, **kwargs)

    captioner.model.generate = counting
    return calls


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------------------------
# BLIP


def test_blip_captions_are_strings_deterministic_and_batch_independent(blip_dir, frames):
    captioner = load(blip_dir, batch_size=4)
    captions = captioner.caption(frames)
    assert len(captions) == len(frames)
    assert all(isinstance(c, str) and c for c in captions)
    assert set(" ".join(captions).split()) <= set(WORDS)  # decoded words, no special tokens
    assert len(set(captions)) >= 3  # frames are told apart, so mix-ups would show
    assert captioner.caption(frames) == captions
    assert load(blip_dir, batch_size=1).caption(frames) == captions
    assert load(blip_dir, batch_size=16).caption(list(frames)) == captions


def test_blip_prompt_prefixes_the_caption(blip_dir, frames):
    captions = load(blip_dir, prompt="a picture of").caption(frames[:3])
    assert all(c.startswith("a picture of ") for c in captions)


def test_blip_identity_tracks_generation_settings(blip_dir):
    assert load(blip_dir).identity == load(blip_dir).identity
    assert load(blip_dir).identity != load(blip_dir, max_new_tokens=7).identity
    assert load(blip_dir).identity != load(blip_dir, num_beams=2).identity


def test_blip_missing_folder_or_other_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        BlipCaptioner.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"no config\.json"):
        BlipCaptioner.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(UserError, match="not a BLIP captioning model"):
        BlipCaptioner.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "blip", "architectures": ["BlipForConditionalGeneration"]})
    )
    with pytest.raises(UserError, match="Could not load"):
        BlipCaptioner.from_pretrained(tmp_path)


def test_blip_rejects_frames_of_the_wrong_type(blip_dir, frames):
    with pytest.raises(UserError, match="uint8"):
        load(blip_dir).caption(frames.astype(np.float32))


# --------------------------------------------------------------------------------------------
# cache


def test_cache_second_call_computes_nothing(blip_dir, frames, tmp_path):
    captioner = load(blip_dir, batch_size=4)
    reference = captioner.caption(frames)
    cache = tmp_path / "captions.jsonl"
    calls = count_generate(captioner)
    assert caption_frames(frames, captioner, cache, progress=False) == reference
    assert calls == [4, 4, 2]
    assert len(read_lines(cache)) == len(frames)

    calls.clear()
    assert caption_frames(frames, captioner, cache, progress=False) == reference
    assert calls == []
    # A fresh process (new captioner object, same folder) reuses the file too.
    fresh = load(blip_dir, batch_size=4)
    fresh_calls = count_generate(fresh)
    assert caption_frames(frames, fresh, cache, progress=False) == reference
    assert fresh_calls == []


def test_cache_interrupted_run_resumes_with_the_rest(blip_dir, frames, tmp_path):
    captioner = load(blip_dir, batch_size=3)
    reference = captioner.caption(frames)
    cache = tmp_path / "captions.jsonl"
    calls = count_generate(captioner, fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        caption_frames(frames, captioner, cache, progress=False)
    assert calls == [3]
    assert len(read_lines(cache)) == 3  # the finished batch was saved

    resumed = load(blip_dir, batch_size=3)
    calls = count_generate(resumed)
    assert caption_frames(frames, resumed, cache, progress=False) == reference
    assert sum(calls) == len(frames) - 3
    assert len(calls) == math.ceil((len(frames) - 3) / 3)


def test_cache_identical_frames_are_captioned_once(blip_dir, frames, tmp_path):
    # A still scene: 6 identical frames per TR, as [TRs, 6, H, W, 3].
    clips = np.repeat(frames[:3, None], 6, axis=1)
    captioner = load(blip_dir, batch_size=8)
    calls = count_generate(captioner)
    captions = caption_frames(clips, captioner, tmp_path / "c.jsonl", progress=False)
    assert calls == [3]
    assert captions == [c for c in captioner.caption(frames[:3]) for _ in range(6)]


def test_cache_streams_chunks_and_survives_a_torn_line(blip_dir, frames, tmp_path):
    captioner = load(blip_dir, batch_size=4)
    reference = captioner.caption(frames)
    cache = tmp_path / "captions.jsonl"
    caption_frames(frames[:4], captioner, cache, progress=False)
    with cache.open("ab") as f:  # a crash in the middle of writing a line
        f.write(b'{"key": "abc", "capt')
    chunks = (frames[i : i + 3] for i in range(0, len(frames), 3))
    calls = count_generate(captioner)
    assert caption_frames(chunks, captioner, cache, progress=False) == reference
    assert sum(calls) == len(frames) - 4
    lines = cache.read_text(encoding="utf-8").splitlines()
    assert sum(1 for line in lines if line.startswith('{"key": "abc"')) == 1
    assert len(read_lines_lenient(cache)) == len(frames)


def read_lines_lenient(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def test_cache_keys_include_the_captioner_identity(blip_dir, frames, tmp_path):
    cache = tmp_path / "captions.jsonl"
    caption_frames(frames[:2], load(blip_dir), cache, progress=False)
    other = load(blip_dir, max_new_tokens=3)
    calls = count_generate(other)
    captions = caption_frames(frames[:2], other, cache, progress=False)
    assert calls == [2]  # other settings: nothing reused
    assert captions == other.caption(frames[:2])
    assert all(len(c.split()) <= 3 for c in captions)


# --------------------------------------------------------------------------------------------
# augmentation

SIM_CAPTIONS = [
    "A red circle moves slowly to the left on a plain grey background.",
    "The camera zooms quickly in on a photograph of an astronaut in a spacesuit.",
    "a man riding a motorcycle down a busy street",
    "two dogs playing in the grass near a small house",
    "On a dark background, a blue diamond spins rapidly clockwise.",
    "a large group of people walking on a beach at sunset",
]
WORD = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*")


def test_shipped_lexicon_loads_with_hundreds_of_single_word_entries():
    lexicon = load_lexicon()
    assert sum(1 for v in lexicon.values() if v) >= 200
    for word, synonyms in lexicon.items():
        assert word == word.lower() and WORD.fullmatch(word)
        assert word not in STOP_WORDS
        assert word not in synonyms
        assert all(WORD.fullmatch(s) for s in synonyms)


def test_lexicon_keeps_simulator_class_words_within_their_class():
    from mindvideo.sim.vocabulary import COLOURS, SHAPES

    lexicon = load_lexicon()
    colours = {*COLOURS, "orange", "purple", "pink", "brown", "black", "white", "violet"}
    for name in COLOURS:
        assert name in lexicon  # every simulator colour has an entry ...
        assert not set(lexicon[name]) & (colours - {name, "violet"})  # ... never another colour
    for shape in SHAPES:
        assert shape in lexicon
        assert not set(lexicon[shape]) & set(SHAPES)
    for a, b in [("left", "right"), ("slowly", "quickly"), ("clockwise", "counterclockwise")]:
        assert b not in lexicon[a] and a not in lexicon[b]


def test_augmenter_is_deterministic_for_a_seed_and_changes_captions():
    augment = CaptionAugmenter(p_synonym=0.5, p_swap=0.2)
    first = [augment(c, np.random.default_rng(7)) for c in SIM_CAPTIONS]
    again = [augment(c, np.random.default_rng(7)) for c in SIM_CAPTIONS]
    other = [augment(c, np.random.default_rng(8)) for c in SIM_CAPTIONS]
    assert first == again
    assert first != other
    assert sum(a != c for a, c in zip(first, SIM_CAPTIONS, strict=True)) >= 4
    # The seed passed at construction drives calls without an rng.
    assert [CaptionAugmenter(0.5, 0.2, seed=3)(c) for c in SIM_CAPTIONS] == [
        CaptionAugmenter(0.5, 0.2, seed=3)(c) for c in SIM_CAPTIONS
    ]


def test_synonyms_come_from_the_lexicon_and_keep_words_in_place():
    lexicon = load_lexicon()
    augment = CaptionAugmenter(p_synonym=1.0, p_swap=0.0)
    rng = np.random.default_rng(0)
    replaced = 0
    for caption in SIM_CAPTIONS * 5:
        out = augment(caption, rng)
        before, after = WORD.findall(caption), WORD.findall(out)
        assert len(after) == len(before)
        assert WORD.sub("", out) == WORD.sub("", caption)  # punctuation and spacing kept
        for old, new in zip(before, after, strict=True):
            if old.lower() in ("a", "an"):
                continue  # the article may change to agree with the next word
            if new != old:
                assert new.lower() in lexicon[old.lower()]
                assert new[0].isupper() == old[0].isupper()
                replaced += 1
            elif old.lower() in STOP_WORDS:
                assert new == old
    assert replaced > 10


def test_swaps_permute_content_words_only():
    augment = CaptionAugmenter(p_synonym=0.0, p_swap=1.0)
    rng = np.random.default_rng(0)
    for caption in SIM_CAPTIONS:
        out = augment(caption, rng)
        before, after = WORD.findall(caption), WORD.findall(out)
        assert sorted(w.lower() for w in after) == sorted(w.lower() for w in before)
        for old, new in zip(before, after, strict=True):
            if old.lower() in STOP_WORDS:
                assert new.lower() == old.lower() or {old.lower(), new.lower()} <= {"a", "an"}
        assert out[0].isupper() == caption[0].isupper()
    assert augment("a man", rng) == "a man"  # one content word: nothing to swap


def test_zero_probabilities_are_the_identity():
    augment = CaptionAugmenter(p_synonym=0.0, p_swap=0.0)
    for caption in [*SIM_CAPTIONS, "", "  odd   spacing, 3 numbers!  ", "ALL CAPS RED CAR"]:
        assert augment(caption, np.random.default_rng(0)) == caption


def test_articles_and_case_follow_the_replacement(tmp_path):
    augment = CaptionAugmenter(p_synonym=1.0, p_swap=0.0, lexicon={"car": ["automobile"]})
    rng = np.random.default_rng(0)
    assert augment("A car. a car, CAR", rng) == "An automobile. an automobile, AUTOMOBILE"
    augment = CaptionAugmenter(p_synonym=1.0, p_swap=0.0, lexicon={"apple": ["pear"]})
    assert augment("an apple", rng) == "a pear"


def test_keep_and_user_lexicon_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"red": ["crimson"], "circle": ["disc"]}))
    rng = np.random.default_rng(0)
    assert CaptionAugmenter(1.0, 0.0, lexicon=path)("a red circle", rng) == "a crimson disc"
    kept = CaptionAugmenter(1.0, 0.0, lexicon=path, keep=["Red"])
    assert kept("a red circle", rng) == "a red disc"
    with pytest.raises(UserError, match="does not exist"):
        CaptionAugmenter(lexicon=tmp_path / "missing.json")
    path.write_text(json.dumps({"car": ["motor car"]}))
    with pytest.raises(UserError, match="not a single word"):
        CaptionAugmenter(lexicon=path)
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="JSON object"):
        CaptionAugmenter(lexicon=path)
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        CaptionAugmenter(p_synonym=1.5)
