"""`compare_runs`: runs side by side, paired or Welch t-tests against the reference."""

import json

import numpy as np
import pytest
from helpers.run import random_clips, write_reconstruction
from scipy import stats

from mindvideo.config import EvaluateConfig
from mindvideo.evaluation import significance_label
from mindvideo.evaluation.compare import compare_runs, write_comparison
from mindvideo.evaluation.runner import evaluate_reconstructions
from mindvideo.utils import UserError


def evaluate(root, name, pred, gt):
    recon = write_reconstruction(root / f"{name}-recon", pred, gt)
    cfg = EvaluateConfig(reconstructions=str(recon), bootstrap=200, flow_size=None)
    return evaluate_reconstructions(cfg, root / name / "evaluate", progress=False)


def noisy(gt, scale, seed):
    noise = np.random.default_rng(seed).normal(0, scale, gt.shape)
    return np.clip(gt + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """full (slightly noisy), ablation (very noisy) on the same 8 windows; other (other windows)."""
    root = tmp_path_factory.mktemp("runs")
    gt = random_clips(8, seed=10)
    full = evaluate(root, "full", noisy(gt, 10, 1), gt)
    ablation = evaluate(root, "ablation", noisy(gt, 60, 2), gt)
    gt2 = random_clips(7, seed=11)
    other = evaluate(root, "other", noisy(gt2, 30, 3), gt2)
    return root, full, ablation, other


def test_same_windows_give_paired_tests(runs):
    root, full, ablation, _ = runs
    comp = compare_runs([root / "full", root / "ablation"])  # run directories holding evaluate/
    assert comp.reference == "full"
    assert [r["name"] for r in comp.runs] == ["full", "ablation"]
    assert comp.runs[1]["paired_with_reference"] is True
    for key in ("ssim", "psnr"):
        test = comp.metrics[key]["tests"]["ablation"]
        ref = stats.ttest_rel(ablation.samples[key], full.samples[key])
        assert test["test"] == "paired"
        assert test["pvalue"] == pytest.approx(ref.pvalue)
        assert test["statistic"] == pytest.approx(ref.statistic)
        assert test["significance"] == significance_label(ref.pvalue)
        assert test["mean_difference"] < 0  # more noise, lower SSIM and PSNR
        assert comp.metrics[key]["scores"]["full"] == full.metrics[key]
        assert "full" not in comp.metrics[key]["tests"]
        rank = comp.metrics[key]["wilcoxon"]["ablation"]
        ref_w = stats.wilcoxon(ablation.samples[key] - full.samples[key])
        assert rank["test"] == "wilcoxon signed-rank"
        assert rank["pvalue"] == pytest.approx(ref_w.pvalue)
        perm = comp.metrics[key]["permutation"]["ablation"]
        assert perm["test"].startswith("permutation (paired")
        # 8 windows: 256 sign patterns; every difference is negative, so only the observed one
        # and its mirror image reach |mean| - the exact p is 2/256.
        assert perm["pvalue"] == pytest.approx(2 / 256, abs=0.005)
    assert comp.metrics["ssim"]["tests"]["ablation"]["significance"] != "p>0.05"


def test_other_windows_give_welch_tests_and_reference_choice(runs):
    root, full, _, other = runs
    comp = compare_runs([root / "full" / "evaluate", root / "other"], reference="other")
    assert comp.reference == "other"
    assert comp.runs[0]["paired_with_reference"] is False
    test = comp.metrics["ssim"]["tests"]["full"]
    ref = stats.ttest_ind(full.samples["ssim"], other.samples["ssim"], equal_var=False)
    assert test["test"] == "welch" and test["pvalue"] == pytest.approx(ref.pvalue)
    assert test["df"] == pytest.approx(ref.df)
    rank = comp.metrics["ssim"]["wilcoxon"]["full"]
    ref_u = stats.mannwhitneyu(full.samples["ssim"], other.samples["ssim"])
    assert rank["test"] == "wilcoxon rank-sum" and rank["pvalue"] == pytest.approx(ref_u.pvalue)
    assert comp.metrics["ssim"]["permutation"]["full"]["test"] == "permutation (two samples)"
    by_path = compare_runs([root / "full", root / "other"], reference=root / "other")
    assert by_path.reference == "other"


def test_written_tables(runs, tmp_path):
    root = runs[0]
    comp = compare_runs([root / "full", root / "ablation", root / "other"], names=["A", "B", "C"])
    paths = write_comparison(comp, tmp_path / "cmp")
    doc = json.loads(paths["json"].read_text())
    assert doc["reference"] == "A"
    assert set(doc["metrics"]) == {
        *("pixel_2way", "ssim", "psnr", "hue_pcc", "epe", "flow_angular_error"),
    }
    assert doc["metrics"]["ssim"]["chance"] is None
    md = paths["markdown"].read_text()
    assert md.splitlines()[0] == "| metric | chance | A (reference) | B | C |"
    label = doc["metrics"]["ssim"]["tests"]["B"]["significance"]
    w_label = doc["metrics"]["ssim"]["wilcoxon"]["B"]["significance"]
    p_label = doc["metrics"]["ssim"]["permutation"]["B"]["significance"]
    assert f"; t {label}, W {w_label}, perm {p_label})" in md
    assert "(shuffled " in md  # pixel identification carries its empirical chance
    assert "B vs A: paired tests (t, Wilcoxon signed-rank, sign-flip permutation)" in md
    assert "C vs A: two-sample tests (Welch t, Wilcoxon rank-sum, permutation)" in md


def test_errors(runs, tmp_path):
    root = runs[0]
    with pytest.raises(UserError, match="at least two runs"):
        compare_runs([root / "full"])
    with pytest.raises(UserError, match="not one of the compared runs"):
        compare_runs([root / "full", root / "other"], reference="nope")
    with pytest.raises(UserError, match=r"metrics\.json"):
        compare_runs([root / "full", tmp_path])


def test_published_figures_beside_the_metrics_computed_the_same_way(runs, tmp_path):
    root = runs[0]
    comp = compare_runs([root / "full", root / "other"], published=True, permutations=200)
    doc = comp.to_dict()
    # No judges here: SSIM and PSNR (scikit-image's SSIM on RGB, PSNR on 0-255) and
    # Mind-Animator's Hue-pcc (RGB read as BGR by default) are computed as published; EPE at
    # the clips' 16 pixels is not Mind-Animator's 512.
    assert set(doc["published"]["full"]) == {"ssim", "psnr", "hue_pcc"}
    ssim = {(r["method"], r["subject"]): r["value"] for r in doc["published"]["full"]["ssim"]}
    assert ssim[("MinD-Video", "1")] == 0.171 and ssim[("Mind-Animator", "3")] == 0.349
    md = comp.to_markdown()
    assert "## Beside published results (cc2017), same definitions only" in md
    assert "| full | ssim |" in md and "for scale only" in md
    assert "published" not in compare_runs([root / "full", root / "other"]).to_dict()
