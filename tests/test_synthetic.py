"""The synthetic cohort: deterministic, lesions where the labels say, kinds that differ on FLAIR."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from anodiff.data.cases import discover
from anodiff.data.cohort import write_cohort
from anodiff.data.synthetic import LESION_KINDS, plan_kinds, render_subject
from anodiff.errors import DataError

SPACING = 3.0  # mm; coarse enough for seconds per subject


def test_same_seed_same_subject_other_seed_other_subject():
    a = render_subject(7, 1, "glioma", spacing_mm=SPACING)
    b = render_subject(7, 1, "glioma", spacing_mm=SPACING)
    c = render_subject(8, 1, "glioma", spacing_mm=SPACING)
    for m in a.images:
        np.testing.assert_array_equal(a.images[m], b.images[m])
    np.testing.assert_array_equal(a.label, b.label)
    assert a.label.shape != c.label.shape or not np.array_equal(a.images["flair"], c.images["flair"])


@pytest.mark.parametrize("kind", LESION_KINDS)
def test_labels_cover_what_the_lesion_changed(kind):
    lesion = render_subject(3, 2, kind, spacing_mm=SPACING)
    healthy = render_subject(3, 2, kind, spacing_mm=SPACING, with_lesion=False)
    assert not healthy.label.any() and lesion.label.any()
    change = sum(np.abs(lesion.images[m] - healthy.images[m]) for m in lesion.images)
    inside = lesion.label > 0
    assert change[inside].mean() > 0.15  # every labelled voxel really differs
    if kind in ("wm_lesions", "t1_hypo"):  # no mass effect: nothing changes far from the label
        near = ndimage.binary_dilation(inside, iterations=2)
        assert change[~near].max() < 1e-6
    else:  # mass effect: anatomy moves around the lesion, most change is still inside it
        assert change[inside].sum() > 0.5 * change.sum() or change[inside].mean() > 5 * change[~inside].mean()


def _best_flair_dice(subject) -> float:
    flair, truth = subject.images["flair"], subject.label > 0
    brain = flair > 0
    best = 0.0
    for t in np.quantile(flair[brain], np.linspace(0.5, 0.999, 60)):
        pred = brain & (flair >= t)
        best = max(best, 2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
    return best


def test_flair_threshold_finds_glioma_but_not_the_subtle_kinds():
    """The cohort must hold lesions a FLAIR intensity threshold cannot separate."""
    dice = {k: np.mean([_best_flair_dice(render_subject(s, 0, k, spacing_mm=SPACING)) for s in (0, 1)])
            for k in LESION_KINDS}
    assert dice["glioma"] > 0.5
    assert dice["t1_hypo"] < 0.2 and dice["mass"] < 0.3 and dice["wm_lesions"] < 0.4


def test_plan_kinds_cycles_all_kinds():
    plan = plan_kinds(6, 0, healthy_fraction=1 / 3)
    assert plan.count(None) == 2 and sorted(k for k in plan if k) == sorted(LESION_KINDS)
    assert plan_kinds(5, 0, healthy_fraction=0.0, kinds=()) == [None] * 5


def test_written_cohort_is_brats_layout_with_metadata(tiny_cohort):
    found = discover(tiny_cohort)
    assert len(found.cases) == 6 and found.layouts == ("brats2021",) and not found.skipped
    assert all(c.modalities == ("flair", "t1", "t1ce", "t2") and c.label for c in found.cases)
    meta = json.loads((tiny_cohort / "cohort.json").read_text(encoding="utf-8"))
    kinds = [c["kind"] for c in meta["cases"]]
    assert kinds.count("healthy") == 2 and set(kinds) - {"healthy"} == set(LESION_KINDS)
    assert all((c["lesion_voxels"] > 0) == (c["kind"] != "healthy") for c in meta["cases"])


def test_cohort_refuses_to_overwrite(tiny_cohort):
    with pytest.raises(DataError, match="not empty"):
        write_cohort(tiny_cohort, 1, spacing_mm=8.0)


def test_healthy_only_cohort(tmp_path):
    infos = write_cohort(tmp_path / "h", 2, seed=1, healthy_only=True, spacing_mm=6.0)
    assert [i.kind for i in infos] == ["healthy", "healthy"]
    assert not list(tmp_path.glob(".*partial"))
