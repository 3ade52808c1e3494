"""`build_report`: one self-contained HTML page, rendered in a real headless Chromium."""

import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import threading

import numpy as np
import pytest
from helpers.run import (
    evaluate_overrides,
    reconstruct_overrides,
    save_classifiers,
    save_encoders,
    write_prepared,
)
from PIL import Image

from mindvideo.config import EvaluateConfig, ExplainConfig, ReconstructConfig, load_config
from mindvideo.evaluation.compare import compare_runs, write_comparison
from mindvideo.evaluation.runner import evaluate_reconstructions, model_caveat
from mindvideo.interpretation.run import explain
from mindvideo.pipeline import reconstruct
from mindvideo.report import build_report, write_run_info
from mindvideo.report.figures import clip_data_uri, sample_rows
from mindvideo.report.html import METRIC_GROUPS
from mindvideo.utils import UserError

CHROMIUM = "/usr/bin/chromium"


def _reconstruct_and_evaluate(source, run, classifiers, seed):
    """``source``'s pipeline and data → ``run/reconstruct`` → ``run/evaluate``."""
    cfg = load_config(ReconstructConfig, None, reconstruct_overrides(source, seed=seed))
    reconstruct(cfg, run / "reconstruct")
    ev = load_config(
        EvaluateConfig,
        None,
        [f"reconstructions={run / 'reconstruct'}", *evaluate_overrides(classifiers)],
    )
    evaluate_reconstructions(ev, run / "evaluate", progress=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """RUN/{prepare,pretrain,contrast,cotrain,reconstruct,evaluate,explain,compare} + run.json."""
    root = tmp_path_factory.mktemp("report")
    run = root / "RUN"
    write_prepared(run / "prepare")
    stages = save_encoders(run)
    classifiers = save_classifiers(root / "models")
    _reconstruct_and_evaluate(run, run, classifiers, seed=0)
    ablation = root / "seed1"  # the same model with other noise: an "ablation" to compare
    _reconstruct_and_evaluate(run, ablation, classifiers, seed=1)
    write_comparison(compare_runs([run, ablation], names=["full", "seed 1"]), run / "compare")
    explain(
        ExplainConfig(
            data=str(run / "prepare"), batch_size=4, **{k: str(v) for k, v in stages.items()}
        ),
        run / "explain",
    )
    write_run_info(run, ["mindvideo", "demo", "--out", "RUN"], preset="tiny <b>&</b>")
    return run


def test_sample_rows_are_evenly_spaced():
    assert sample_rows(100, 5) == [0, 25, 50, 74, 99]
    assert sample_rows(3, 8) == [0, 1, 2]
    assert sample_rows(0, 8) == [] and sample_rows(5, 0) == []


def test_clip_data_uris(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    uri, media = clip_data_uri(frames, fps=3)
    assert media == "gif" and uri.startswith("data:image/gif;base64,R0lGOD")  # "GIF8"
    uri, media = clip_data_uri(frames, fps=3, media="mp4")
    assert media == "mp4" and uri.startswith("data:video/mp4;base64,")
    # H.264 needs even sizes: an odd clip falls back to a GIF.
    assert clip_data_uri(frames[:, :15], fps=3, media="mp4")[1] == "gif"
    with pytest.raises(UserError, match="media"):
        clip_data_uri(frames, fps=3, media="webm")


def test_report_has_every_section_inline_and_escaped(run_dir, tmp_path):
    out = build_report(run_dir, tmp_path / "r.html", samples=3, command="mindvideo report RUN")
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert 'http-equiv="Content-Security-Policy"' in page and "default-src &#x27;none&#x27;" in page
    # No external resource: every src / href is a data: URI or an in-page anchor.
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith(("data:", "#")), attr
    assert "<script" not in page.replace("&lt;script", "")
    # Clips: ground truth and reconstruction for 3 evenly spaced windows of 4.
    assert page.count('<figure class="pair">') == 3
    assert page.count('src="data:image/gif;base64,') == 6
    assert "window 3: segment 1, TR 0" in page and "SSIM" in page
    # Metrics with chance levels and the stand-in note.
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert "<code>video_5way_top1_strict</code>" in page and "0.200" in page  # chance 1/5
    assert "<code>frame_2way_top1_compat</code>" in page and "0.750" in page  # chance 3/4
    assert metrics["meta"]["standin_classifiers"] is True and "Stand-in classifiers." in page
    # NeuroClips' grouping, the field's scores, and the published figures computed the same
    # way (SSIM, PSNR, Mind-Animator's Hue-pcc), for scale.
    groups = [page.index(f'<th colspan="6">{g}</th>') for g in METRIC_GROUPS]
    assert groups == sorted(groups)
    assert groups[1] < page.index("<code>epe</code>") < groups[2]  # spatiotemporal
    assert groups[3] < page.index("<code>hue_pcc</code>")  # frame level, pixel
    assert "Beside published results (cc2017)" in page and "MinD-Video s1 0.171, s2" in page
    # Ablations, interpretation, configs.
    assert "full (reference)" in page and "paired t-test" in page
    assert re.search(r'class="num sig[0-4]"', page)
    assert page.count('src="data:image/png;base64,') == 5  # stages plot, 3 stage bars, flat maps
    assert "First layer across learning stages" in page
    for stage in ("reconstruct", "evaluate", "explain"):
        assert f"<summary>{stage}/config.yaml</summary>" in page
    # Provenance, every string escaped.
    assert "mindvideo demo --out RUN" in page and "mindvideo report RUN" in page
    assert "tiny &lt;b&gt;&amp;&lt;/b&gt;" in page and "<b>&</b>" not in page


def test_clip_scores_not_computed_as_their_reference_say_so():
    meta = {
        "video_metrics": {
            "vifi_clip": {"vifi_clip": False, "standin": True},
            "clip_pcc_neurons": {
                "standin": False,
                "as_reference": False,
                "architecture": "ViT-B/32",
                "reference_architecture": "ViT-L/14",
            },
            "clip_pcc_mind_animator": {"standin": False, "as_reference": True},
        }
    }
    assert "not ViFi-CLIP" in model_caveat("vifi_clip", meta)
    assert model_caveat("clip_pcc_neurons", meta) == (
        "computed with ViT-B/32, not the reference's ViT-L/14"
    )
    assert model_caveat("clip_pcc_mind_animator", meta) == ""


def test_missing_parts_are_skipped_with_a_note(run_dir, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "reconstruct").symlink_to(run_dir / "reconstruct")
    page = build_report(partial, samples=2).read_text()
    assert (partial / "report.html").is_file()
    assert page.count('<figure class="pair">') == 2
    assert "No evaluate/ folder" in page and "No compare/ folder" in page
    assert "No explain/ folder" in page and "not recorded (no run.json" in page
    with pytest.raises(UserError, match="does not exist"):
        build_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="none of the stage folders"):
        build_report(tmp_path / "empty")


# --------------------------------------------------------------------------------------------
# Chromium
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium: ``make test`` installs it first when it is missing and we are root."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"Chromium is not installed ({CHROMIUM}): the report's browser test needs Debian's "
            "chromium package (`make test` installs it as root with apt-get, or run "
            "`apt-get install chromium`)."
        )
    return CHROMIUM


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requested: list[str]

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        self.requested.append(self.path)
        super().do_GET()


@pytest.fixture
def serve(tmp_path):
    """Serve a folder on 127.0.0.1; yields (base URL, list of requested paths)."""
    requested: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requested": requested})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(tmp_path / "site"))
    )
    (tmp_path / "site").mkdir()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "site", requested
    finally:
        server.shutdown()
        server.server_close()


# The page under test is left untouched (its CSP forbids scripts); a same-origin parent page
# inspects it through an iframe once everything has had time to load and play.
CHECK_PAGE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="r" src="report.html" style="width:1280px;height:1600px;border:0"></iframe>
<script>
const frame = document.getElementById("r");
frame.addEventListener("load", () => setTimeout(() => {
  const d = frame.contentDocument;
  const imgs = [...d.images], vids = [...d.querySelectorAll("video")];
  document.body.setAttribute("data-result", JSON.stringify({
    title: d.title,
    images: imgs.length,
    imagesLoaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    videos: vids.length,
    videosReady: vids.filter(v => v.readyState >= 2 && !v.error).length,
    videosPlaying: vids.filter(v => !v.paused && v.currentTime > 0).length,
    details: d.querySelectorAll("details").length,
  }));
}, 3000));
</script></body></html>
"""


def _chromium(binary, profile, *args, timeout=60):
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--autoplay-policy=no-user-gesture-required",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("media", ["gif", "mp4"])
def test_report_renders_in_chromium(run_dir, chromium, serve, tmp_path, media):
    base, site, requested = serve
    build_report(run_dir, site / "report.html", samples=4, media=media)
    (site / "check.html").write_text(CHECK_PAGE)

    res = _chromium(
        chromium,
        tmp_path / "profile",
        "--virtual-time-budget=8000",
        "--dump-dom",
        f"{base}/check.html",
    )
    found = re.search(r'data-result="([^"]*)"', res.stdout)
    assert found, f"the page did not finish loading:\n{res.stderr[-3000:]}"
    result = json.loads(html.unescape(found.group(1)))
    # Every console message (errors, CSP violations) is logged as CONSOLE on stderr.
    console = [line for line in res.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    assert result["title"] == "MinD-Video report: RUN"
    assert result["details"] >= 3
    clips = 2 * 4
    if media == "gif":
        assert result["images"] == clips + 5 and result["imagesLoaded"] == result["images"]
        assert result["videos"] == 0
    else:
        assert result["videos"] == clips and result["videosReady"] == clips
        assert result["videosPlaying"] == clips  # autoplay, muted, looping
        assert result["images"] == 5 and result["imagesLoaded"] == 5
    # Only the two pages themselves were fetched: the report loads nothing.
    assert set(requested) <= {"/check.html", "/report.html", "/favicon.ico"}

    shot = tmp_path / f"report-{media}.png"
    res = _chromium(
        chromium,
        tmp_path / "profile2",
        "--window-size=1280,2000",
        "--virtual-time-budget=3000",
        f"--screenshot={shot}",
        f"{base}/report.html",
    )
    assert shot.is_file(), res.stderr[-3000:]
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1280, 2000)
        px = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert px.std() > 20  # not a blank page
    assert (px.sum(axis=-1) < 600).mean() > 0.05  # a good part of it is not white
    keep = os.environ.get("MINDVIDEO_REPORT_SCREENSHOT_DIR")
    if keep:  # to look at the page: MINDVIDEO_REPORT_SCREENSHOT_DIR=/some/dir pytest ...
        shutil.copy(shot, keep)
        shutil.copy(site / "report.html", os.path.join(keep, f"report-{media}.html"))


def test_report_shows_the_linear_ceiling(tmp_path):
    """A run with a baseline/ folder gets the ceiling's table, each score beside its chance."""
    import json

    from mindvideo.report import build_report

    (tmp_path / "baseline").mkdir()
    score = {
        "name": "scene class 50-way",
        "value": 0.97,
        "sem": 0.01,
        "chance": 0.02,
        "shuffled": 0.023,
        "shuffled_sd": 0.01,
        "n": 150,
        "above_shuffled": True,
    }
    weak = {
        **score,
        "name": "motion top-1",
        "value": 0.15,
        "chance": 0.111,
        "shuffled": 0.125,
        "above_shuffled": False,
    }
    result = {
        "window": 4,
        "n_voxels": 805,
        "n_train_windows": 4320,
        "n_test_windows": 150,
        "scores": [score, weak],
    }
    (tmp_path / "baseline" / "baseline.json").write_text(json.dumps(result))
    page = build_report(tmp_path).read_text()
    assert 'id="baseline"' in page and "scene class 50-way" in page
    assert "<td>yes</td>" in page and "<td><strong>no</strong></td>" in page
