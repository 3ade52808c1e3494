"""ROI selection by intra-subject reproducibility (paper section 3.2).

    "To determine activated regions, we calculate intra-subject reproducibility of each voxel,
    correlating fMRI data across multiple viewings. The correlation coefficients are then
    converted to z-scores and averaged. We compute statistical significance using a one-sample
    t-test (P<0.01, DOF=17, Bonferroni correction). We selected the top 50% of the most
    significant voxels after the statistical test."

:class:`ReproducibilityROI` is a fit/transform object in the style of nilearn's maskers. It is
fitted on the *training* segments only and then applied, unchanged, to training and test data.
It sees only what is passed to :meth:`ReproducibilityROI.fit`, keeps no reference to those
arrays (only per-vertex statistics), and :meth:`~ReproducibilityROI.transform` never updates
anything, so test fMRI cannot enter the selection.

The top-fraction decision: the 50% is taken *of the vertices that pass the Bonferroni-corrected
test*, not of all vertices. Half of all 59,412 cortical vertices would be 29,706, while the paper
reports 6016 / 6224 / 3744 voxels for subjects 1 / 2 / 3 (about 10% of cortex), which only the
"of the significant ones" reading can give. Those three counts are all multiples of the patch size
16: they are the sizes *after* the authors' wrap padding (``V + 16 - V % 16``, see
:func:`mindvideo.data.pairing.pad_voxels`); the authors' data loader annotates the subject-3
array as ``(18, 240, 3731)``, and 3731 pads to 3744. So the ROI itself has 1–16 fewer voxels than
the numbers in the paper.

The ``rule`` option: ``"top"`` (the paper) ranks all significant vertices together, so a
weaker-but-reliable area (on the simulated data, the motion areas MT+ / dorsal stream, whose
t values lie below those of early visual cortex) can lose every vertex to the strongest areas.
``"per-area"`` applies the same top fraction inside each atlas area (``fit(..., areas=...)``, on
prepared Wen 2018 data the Glasser MMP 1.0 parcel of each vertex, per hemisphere): every area
with a significant vertex keeps ``ceil(top_fraction * n_significant_in_area)`` of them, most
significant first.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np

from mindvideo.utils import UserError

logger = logging.getLogger(__name__)

_R_CLIP = 1.0 - 1e-7  # keeps arctanh finite for (near-)identical repetitions
RULES = ("top", "per-area")
"""How the top fraction is taken: of all significant vertices (paper), or within each area."""


def reproducibility(repetitions: Sequence[np.ndarray]) -> np.ndarray:
    """Per-vertex reproducibility of one segment: Fisher z of the correlation between viewings.

    ``repetitions``: R >= 2 arrays ``[T, V]`` (the same segment watched R times). For each vertex
    the Pearson correlation of every pair of repetitions is Fisher-transformed
    (``arctanh``, with r clipped to ±(1 - 1e-7)) and the R(R-1)/2 pair values are averaged.
    For z-scored series the correlation is the mean of products. A vertex that is constant in a
    repetition has correlation 0. Returns ``[V]`` float64.
    """
    if len(repetitions) < 2:
        raise UserError(
            f"Reproducibility needs at least 2 repetitions of a segment, got {len(repetitions)}."
        )
    shape = np.shape(repetitions[0])
    units = []
    for r, rep in enumerate(repetitions):
        if np.shape(rep) != shape or len(shape) != 2:
            raise UserError(
                f"Repetition {r + 1} of a segment has shape {np.shape(rep)}, but repetition 1 has "
                f"{shape}; every repetition must be a [T, V] array of the same shape."
            )
        x = np.asarray(rep)
        # Centre with a float64 mean, then float32 products (r to ~1e-6, 2x faster than float64).
        x = (x - x.mean(axis=0, dtype=np.float64)).astype(np.float32, copy=False)
        norm = np.sqrt(np.einsum("tv,tv->v", x, x))
        x *= np.where(norm > 0, 1.0 / np.where(norm > 0, norm, 1.0), 0.0).astype(np.float32)
        units.append(x)  # unit-norm columns; a constant vertex is all 0 → r = 0
    z = np.zeros(shape[1])
    pairs = list(itertools.combinations(range(len(units)), 2))
    for i, j in pairs:
        r = np.einsum("tv,tv->v", units[i], units[j]).astype(np.float64)
        z += np.arctanh(np.clip(r, -_R_CLIP, _R_CLIP))
    return z / len(pairs)


class ReproducibilityROI:
    """Select the voxels whose responses reproduce across repeated viewings (paper 3.2).

    Parameters
    ----------
    alpha:
        Family-wise significance level (paper: P < 0.01).
    top_fraction:
        Fraction of the *significant* vertices to keep, most significant first (paper: 0.5);
        ``1.0`` keeps every significant vertex. The count kept is ``ceil(top_fraction * n_sig)``.
    correction:
        ``"bonferroni"`` (paper): a vertex is significant when ``p < alpha / V``; ``"none"``:
        when ``p < alpha``.
    alternative:
        Side of the one-sample t-test of the segments' Fisher z against 0. ``"greater"``
        (default) asks whether responses reproduce (positive correlation); a reliably
        *negative* correlation between viewings is not reproducibility, so a two-sided test
        (``"two-sided"``, which would also select those) is only offered as an option.
    rule:
        ``"top"`` (paper): the ``top_fraction`` most significant of all significant vertices.
        ``"per-area"``: the ``top_fraction`` most significant of each area's significant
        vertices (``ceil`` per area), so every area with a reproducible vertex is represented;
        :meth:`fit` then needs ``areas``.

    Learned attributes (after :meth:`fit`)
    --------------------------------------
    ``mean_z_`` ``[V]`` (mean Fisher z over segments), ``t_`` ``[V]``, ``p_`` ``[V]``,
    ``significant_`` bool ``[V]``, ``mask_`` bool ``[V]`` (the ROI), ``indices_`` ``[V_roi]``
    (sorted, in file order), ``n_segments_``, ``n_repetitions_`` (the smallest R seen),
    ``n_features_in_`` (V), ``threshold_p_`` (the per-vertex P threshold); when ``areas`` was
    given: ``area_counts_``, area label → ``(n_significant, n_kept)`` for every area with a
    significant vertex (``None`` otherwise).

    Use
    ---
    ``roi = ReproducibilityROI().fit(train_segments)`` with ``train_segments`` an iterable of
    ``(rep1, rep2)`` pairs of ``[T, V]`` arrays, one per *training* segment (a generator is fine:
    segments are reduced to one ``[V]`` vector each as they arrive, so only one segment needs to
    be in memory); then ``roi.transform(x)`` for any ``x: [..., V]``.
    """

    def __init__(
        self,
        alpha: float = 0.01,
        top_fraction: float = 0.5,
        correction: Literal["bonferroni", "none"] = "bonferroni",
        alternative: Literal["greater", "two-sided"] = "greater",
        rule: Literal["top", "per-area"] = "top",
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise UserError(f"ROI alpha must be in (0, 1), got {alpha}.")
        if not 0.0 < top_fraction <= 1.0:
            raise UserError(f"ROI top_fraction must be in (0, 1], got {top_fraction}.")
        for key, value, choices in (
            ("correction", correction, ("bonferroni", "none")),
            ("alternative", alternative, ("greater", "two-sided")),
            ("rule", rule, RULES),
        ):
            if value not in choices:
                allowed = " or ".join(repr(c) for c in choices)
                raise UserError(f"ROI {key} must be {allowed}, got {value!r}.")
        self.alpha = alpha
        self.top_fraction = top_fraction
        self.correction = correction
        self.alternative = alternative
        self.rule = rule

    def __repr__(self) -> str:
        return (
            f"ReproducibilityROI(alpha={self.alpha}, top_fraction={self.top_fraction}, "
            f"correction={self.correction!r}, alternative={self.alternative!r}, rule={self.rule!r})"
        )

    # -- fitting --------------------------------------------------------------------------------

    def fit(
        self, segments: Iterable[Sequence[np.ndarray]], areas: np.ndarray | None = None
    ) -> ReproducibilityROI:
        """Fit on the training segments: ``segments`` yields, per segment, R >= 2 ``[T, V]``
        repetitions (preprocessed). Per segment: Pearson r per vertex for each pair of
        repetitions → Fisher z → mean over pairs; then a one-sample t-test of the segments' z
        against 0 (DOF = n_segments - 1), the correction over V vertices, and the top fraction of
        the significant vertices by t — of all of them (``rule="top"``) or of each area's.

        ``areas``: the area label of each vertex ``[V]`` (int ids, or names such as ``"L_MT"``;
        all vertices sharing a label form one area); needed by ``rule="per-area"``, and with
        ``"top"`` only used to count the vertices kept per area (``area_counts_``).
        Returns ``self``.
        """
        from scipy import stats

        if areas is None and self.rule == "per-area":
            raise UserError(
                "The per-area ROI rule needs the area of each vertex: pass areas=[V] labels to "
                "fit() (prepare passes the Glasser area of each cortical vertex)."
            )
        zs: list[np.ndarray] = []
        n_reps: set[int] = set()
        labels: np.ndarray | None = None
        for k, reps in enumerate(segments):
            if len(reps) < 2:
                raise UserError(
                    f"Training segment {k + 1} has {len(reps)} repetition(s); ROI selection "
                    "needs at least 2 viewings of every training segment."
                )
            if zs and np.shape(reps[0])[-1] != zs[0].shape[0]:
                raise UserError(
                    f"Training segment {k + 1} has {np.shape(reps[0])[-1]} vertices but segment 1 "
                    f"has {zs[0].shape[0]}; all segments must come from the same grayordinates."
                )
            zs.append(reproducibility(reps))
            n_reps.add(len(reps))
            if k == 0 and areas is not None:  # a wrong length fails before the long part
                labels = _check_areas(areas, zs[0].shape[0])
        if len(zs) < 2:
            raise UserError(
                f"ROI selection needs at least 2 training segments for its t-test, got {len(zs)}."
            )
        z = np.stack(zs)  # [S, V]
        n_seg, n_vox = z.shape
        res = stats.ttest_1samp(z, 0.0, axis=0, alternative=self.alternative)
        t = np.nan_to_num(np.asarray(res.statistic, dtype=np.float64), nan=0.0)
        p = np.nan_to_num(np.asarray(res.pvalue, dtype=np.float64), nan=1.0)
        threshold = self.alpha / n_vox if self.correction == "bonferroni" else self.alpha
        significant = p < threshold
        n_sig = int(significant.sum())
        if n_sig == 0:
            raise UserError(
                f"No vertex passed the reproducibility t-test (P < {self.alpha}, "
                f"{self.correction}, {n_seg} segments, {n_vox} vertices); check that the "
                "repetitions of each segment are the same stimulus and aligned in time, or "
                "raise alpha / set correction to 'none'."
            )
        mask = self._select(t, significant, labels)
        n_keep = int(mask.sum())

        self.mean_z_ = z.mean(axis=0)
        self.t_ = t
        self.p_ = p
        self.significant_ = significant
        self.mask_ = mask
        self.indices_ = np.flatnonzero(mask)
        self.n_segments_ = n_seg
        self.n_repetitions_ = min(n_reps)
        self.n_features_in_ = n_vox
        self.threshold_p_ = threshold
        self.area_counts_ = None if labels is None else _area_counts(labels, significant, mask)
        logger.info(
            "ROI: %d of %d vertices significant (P < %g, %s, DOF %d); kept the top %d (%s)",
            n_sig,
            n_vox,
            self.alpha,
            self.correction,
            n_seg - 1,
            n_keep,
            "of all significant vertices" if self.rule == "top" else "per area",
        )
        return self

    def _select(
        self, t: np.ndarray, significant: np.ndarray, labels: np.ndarray | None
    ) -> np.ndarray:
        """The ROI mask: the top fraction of the significant vertices by t, overall or per area.
        Ties keep the lower vertex index (stable sorts)."""
        mask = np.zeros(t.shape[0], dtype=bool)
        if self.rule == "top":
            n_keep = math.ceil(self.top_fraction * int(significant.sum()))
            # Rank by t (equivalent to p: all vertices share the DOF); p underflows for huge t.
            order = np.argsort(np.where(significant, -t, np.inf), kind="stable")
            mask[order[:n_keep]] = True
            return mask
        assert labels is not None
        sig = np.flatnonzero(significant)
        _, group = np.unique(labels[sig], return_inverse=True)
        order = np.lexsort((-t[sig], group))  # by area, then by t descending (stable)
        group = group[order]
        counts = np.bincount(group)
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        rank = np.arange(sig.size) - starts[group]  # 0 = the area's most significant vertex
        n_keep = np.ceil(self.top_fraction * counts).astype(np.int64)
        mask[sig[order][rank < n_keep[group]]] = True
        return mask

    def summary(self) -> dict[str, Any]:
        """The fitted ROI's settings and statistics for a manifest (JSON-ready): vertex counts,
        P threshold, options, the largest t not kept and, when areas were given, the counts per
        area (``{label: {"significant": n, "kept": k}}``)."""
        self._check_fitted()
        if self.t_ is None:
            raise UserError("An ROI rebuilt from a saved mask has no statistics to summarise.")
        rejected = self.t_[~self.mask_]
        out: dict[str, Any] = {
            "n_vertices": int(self.n_features_in_),
            "n_segments": int(self.n_segments_),
            "n_significant": int(self.significant_.sum()),
            "n_kept": self.n_voxels_,
            "threshold_p": float(self.threshold_p_),
            "alpha": self.alpha,
            "correction": self.correction,
            "alternative": self.alternative,
            "top_fraction": self.top_fraction,
            "rule": self.rule,
            "max_t_rejected": float(rejected.max()) if rejected.size else None,
        }
        if self.area_counts_ is not None:
            out["areas"] = {
                str(k): {"significant": n, "kept": m} for k, (n, m) in self.area_counts_.items()
            }
        return out

    @classmethod
    def from_mask(cls, mask: np.ndarray, **params: object) -> ReproducibilityROI:
        """An already-fitted selector from a saved ``roi_mask.npy`` (bool ``[V]``); the test
        statistics (``t_``, ``p_``, ...) are then ``None``."""
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.ndim != 1:
            raise UserError(
                f"An ROI mask must be a 1-D boolean array, got {mask.dtype} of shape {mask.shape}."
            )
        roi = cls(**params)  # type: ignore[arg-type]
        roi.mask_ = mask.copy()
        roi.indices_ = np.flatnonzero(mask)
        roi.n_features_in_ = mask.shape[0]
        roi.mean_z_ = roi.t_ = roi.p_ = roi.significant_ = None
        roi.n_segments_ = roi.n_repetitions_ = roi.threshold_p_ = roi.area_counts_ = None
        return roi

    # -- applying -------------------------------------------------------------------------------

    @property
    def n_voxels_(self) -> int:
        """Number of voxels in the ROI (V_roi)."""
        self._check_fitted()
        return int(self.indices_.shape[0])

    def _check_fitted(self) -> None:
        if not hasattr(self, "mask_"):
            raise UserError(
                "This ReproducibilityROI is not fitted yet; call fit() on the training segments "
                "first (or build it from a saved roi_mask.npy with ReproducibilityROI.from_mask)."
            )

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Keep the ROI voxels: ``x: [..., V]`` → ``[..., V_roi]`` (file order). Fits nothing."""
        self._check_fitted()
        n = np.shape(x)[-1] if np.ndim(x) else 0
        if n != self.n_features_in_:
            raise UserError(
                f"The data has {n} vertices on its last axis but the ROI was fitted on "
                f"{self.n_features_in_}; pass data of the same subject and grayordinates "
                "(cortex only, as in fitting)."
            )
        return np.asarray(x)[..., self.indices_]

    def fit_transform(
        self, segments: Sequence[Sequence[np.ndarray]], areas: np.ndarray | None = None
    ) -> list[list[np.ndarray]]:
        """:meth:`fit` on ``segments`` then :meth:`transform` each repetition of each segment."""
        segments = [list(reps) for reps in segments]
        self.fit(segments, areas)
        return [[self.transform(rep) for rep in reps] for reps in segments]


def _check_areas(areas: np.ndarray, n_vox: int) -> np.ndarray:
    """``areas`` as a 1-D array (a copy) of one label per vertex; a UserError otherwise."""
    labels = np.array(areas)
    if labels.ndim != 1 or labels.shape[0] != n_vox:
        raise UserError(
            f"ROI areas must give one area per vertex: the data has {n_vox} vertices but areas "
            f"has shape {labels.shape}."
        )
    return labels


def _area_counts(
    labels: np.ndarray, significant: np.ndarray, mask: np.ndarray
) -> dict[Any, tuple[int, int]]:
    """Area label → (significant vertices, kept vertices), areas with a significant vertex."""
    names, group = np.unique(labels[significant], return_inverse=True)
    n_sig = np.bincount(group, minlength=len(names))
    n_kept = np.bincount(group, weights=mask[significant], minlength=len(names))
    return {name.item(): (int(a), int(b)) for name, a, b in zip(names, n_sig, n_kept, strict=True)}


# --------------------------------------------------------------------------------------------
# A group ROI from other subjects' prepared folders
# --------------------------------------------------------------------------------------------


class ReferenceROI(ReproducibilityROI):
    """A new subject's ROI taken from other subjects' ROIs, with no test on its own data.

    The paper's test needs many training segments: over 3 segments a t-test has 2 degrees of
    freedom, and Bonferroni over ~59k vertices then keeps almost nothing. Subjects prepared on
    the same grayordinates (fsLR-32k, as Wen 2018's CIFTI files and the simulator's) share the
    vertex numbering, so the vertices the other subjects' tests found reliable can define the
    ROI of a subject recorded for less: the vertices kept by at least ``min_subjects`` of the
    references (the union by default). Built with :meth:`from_references`; it transforms like
    any fitted ROI, and :meth:`summary` names the references.
    """

    references_: list[dict[str, Any]]
    min_subjects_: int
    n_reference_grayordinates_: int

    @classmethod
    def from_references(
        cls,
        grayordinates: np.ndarray,
        references: Sequence[tuple[dict[str, Any], np.ndarray]],
        min_subjects: int = 1,
    ) -> ReferenceROI:
        """``grayordinates``: the 91k-grayordinate index of each of this subject's vertices
        ``[V]`` (the vertices :meth:`transform` sees); ``references``: per reference subject,
        a description (JSON-ready: its folder, subject, fingerprint) and the grayordinate
        indices its ROI kept. A vertex is kept when at least ``min_subjects`` references hold
        it; a :class:`UserError` if none is."""
        if not references:
            raise UserError("A reference ROI needs at least one reference subject.")
        if not 1 <= min_subjects <= len(references):
            raise UserError(
                f"roi.reference_min must be between 1 and the number of references "
                f"({len(references)}), got {min_subjects}."
            )
        grayordinates = np.asarray(grayordinates)
        votes = np.zeros(grayordinates.shape[0], dtype=np.int64)
        for _, kept in references:
            votes += np.isin(grayordinates, kept)
        mask = votes >= min_subjects
        if not mask.any():
            raise UserError(
                f"None of this subject's {grayordinates.shape[0]} vertices is in at least "
                f"{min_subjects} of the reference ROIs: the references must be prepared on the "
                "same grayordinates (fsLR-32k)."
            )
        roi = cls.from_mask(mask)
        roi.references_ = [dict(info) for info, _ in references]
        roi.min_subjects_ = int(min_subjects)
        union = np.unique(np.concatenate([np.asarray(kept) for _, kept in references]))
        roi.n_reference_grayordinates_ = int(union.size)
        logger.info(
            "ROI from %d reference subject(s): %d of %d vertices kept (in at least %d of their "
            "ROIs); no test on this subject's data",
            len(references),
            int(mask.sum()),
            grayordinates.shape[0],
            min_subjects,
        )
        return roi

    def summary(self) -> dict[str, Any]:
        """The references (as given), the vote and the counts, for a manifest."""
        self._check_fitted()
        return {
            "rule": "reference",
            "references": self.references_,
            "reference_min": self.min_subjects_,
            "n_vertices": int(self.n_features_in_),
            "n_reference_grayordinates": self.n_reference_grayordinates_,
            "n_kept": self.n_voxels_,
        }


def read_reference_rois(
    folders: Sequence[str | os.PathLike],
) -> list[tuple[dict[str, Any], np.ndarray]]:
    """Each prepared folder's description (path, subject, voxel count, the sha256 of its ROI's
    grayordinate indices) and those indices, read through
    :meth:`~mindvideo.data.prepared.PreparedData.open` (which checks the folder whole); a
    :class:`UserError` naming a folder that is not a prepared subject with an ROI."""
    import hashlib

    from mindvideo.data.prepared import PreparedData

    out = []
    for folder in folders:
        try:
            data = PreparedData.open(folder)
        except UserError as err:
            raise UserError(f"roi.reference {folder} is not a prepared subject: {err}") from err
        if data.voxel_grayordinates is None:
            raise UserError(
                f"roi.reference {folder} is not a prepared subject with an ROI (no "
                "voxel_grayordinates.npy: the authors' arrays have none); pass folders written "
                "by `mindvideo prepare --dataset wen2018`."
            )
        kept = np.asarray(data.voxel_grayordinates, dtype=np.int64)
        info = {
            "path": str(folder),
            "subject": data.subject,
            "n_voxels": int(kept.size),
            "sha256": hashlib.sha256(kept.tobytes()).hexdigest(),
        }
        out.append((info, kept))
    return out
