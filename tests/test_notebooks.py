"""Every notebook runs through papermill in quick mode and records its headline numbers."""
from pathlib import Path

import pytest

from smearlab.report.runner import REPO_NOTEBOOKS, find_notebooks, run_report

pytestmark = pytest.mark.notebook

NOTEBOOKS = [p.stem for p in find_notebooks(REPO_NOTEBOOKS)]

#: Metrics each notebook must record (checked for presence and sanity below).
EXPECTED = {
    "01_eda": {"dataset", "images", "objects", "per_class", "skipped", "domain_colour_distance", "near_copy_pairs"},
    "02_preprocessing": {"dataset", "domains", "delta_e", "hist_emd", "best_pipeline", "delta_e_reduction"},
    "03_detection": {"dataset", "images", "runs", "best", "mAP50", "mAP", "per_class", "count_accuracy",
                     "thresholds", "tuner_ms"},
    "04_segmentation": {"dataset", "images", "maskrcnn", "two_stage", "unet_dice", "robustness"},
    "05_classical": {"dataset", "images", "methods", "best_classical", "network", "failures"},
    "06_gradcam_masks": {"dataset", "images", "cell_dice", "cell_iou", "classical_cell_dice", "layers",
                         "detector_cam"},
    "07_domain_adaptation": {"dataset", "domains", "seeds", "shared_classes", "directions", "dann_gain",
                             "goal_met"},
    "08_tsne": {"dataset", "separability", "separability_drop", "perplexity"},
    "09_counting": {"dataset", "counted_split", "images", "counts", "count_error", "reviewed",
                    "scored_before_after", "before_after"},
}


def test_every_notebook_has_expected_metrics_declared():
    assert NOTEBOOKS, "no notebooks found"
    assert set(NOTEBOOKS) <= set(EXPECTED), f"add expected metrics for {set(NOTEBOOKS) - set(EXPECTED)}"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_report("quick", out=tmp_path_factory.mktemp("report"), notebook_dir=REPO_NOTEBOOKS,
                      device="cpu")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_quick(quick_run, name):
    r = quick_run["notebooks"][name]
    assert r["status"] == "ok", r["error"]
    assert EXPECTED[name] <= set(r["metrics"])


def test_eda_quick_on_synthetic(quick_run):
    m = quick_run["notebooks"]["01_eda"]["metrics"]
    assert m["dataset"] == "synthetic" and m["images"] == 48  # 24 per staining domain
    assert m["per_class"]["RBC"] > m["per_class"]["WBC"] > 0
    assert m["domain_colour_distance"] > 0.05  # the two stains differ visibly
    assert m["skipped"] == 0


def test_eda_on_cbc_through_data_root(shared_data, tmp_path):
    index = run_report("quick", data_root=shared_data, out=tmp_path, notebook_dir=REPO_NOTEBOOKS,
                       notebooks=["01_eda"], device="cpu", html_export=False)
    r = index["notebooks"]["01_eda"]
    assert r["status"] == "ok", r["error"]
    m = r["metrics"]
    assert m["images"] == 300
    assert m["objects"] == 3951 and m["skipped"] == 1  # 3,952 boxes, one degenerate
    assert set(m["per_class"]) == {"RBC", "WBC", "Platelets"}


def test_preprocessing_quick_closes_the_stain_gap(quick_run):
    m = quick_run["notebooks"]["02_preprocessing"]["metrics"]
    assert m["domains"] == ["A", "B"]
    assert m["delta_e"]["reinhard"] < 0.5 * m["delta_e"]["none"]
    assert m["delta_e_reduction"] > 0.5


def test_preprocessing_on_zheng_through_data_root(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("SMEARLAB_CACHE", str(tmp_path / "cache"))  # the archive is extracted here
    index = run_report("quick", data_root=shared_data, out=tmp_path / "run", notebook_dir=REPO_NOTEBOOKS,
                       notebooks=["02"], device="cpu", html_export=False)
    r = index["notebooks"]["02_preprocessing"]
    assert r["status"] == "ok", r["error"]
    m = r["metrics"]
    assert m["domains"] == ["dataset1", "dataset2"]
    assert m["delta_e"]["reinhard"] < 0.7 * m["delta_e"]["none"]  # normalising D2 to D1 helps


def test_detection_quick_learns_and_tunes(quick_run):
    r = quick_run["notebooks"]["03_detection"]
    m = r["metrics"]
    assert [row["name"] for row in m["runs"]] == ["tiny", "tiny, frozen backbone"]
    assert m["best"] == "tiny"
    assert m["mAP50"] > 0.1  # a tiny model, 8 epochs on 32 CPU images: it must have learnt something
    assert set(m["thresholds"]) == {"RBC", "WBC", "Platelets"}
    exports = Path(quick_run["out"]) / "03_detection"
    assert (exports / "test_detections_coco.json").exists() and (exports / "test_counts.csv").exists()
    assert (exports / "tiny" / "final" / "thresholds.json").exists()


def test_segmentation_quick_learns_masks_and_measures_noise(quick_run):
    m = quick_run["notebooks"]["04_segmentation"]["metrics"]
    assert m["unet_dice"]["cell"] > 0.7  # the U-Net learns the cell class map in quick mode
    for row in (m["maskrcnn"], m["two_stage"]):
        assert 0 <= row["dsb_metric"] <= 1 and 0 <= row["mask_mAP50"] <= 1
    noisy = m["robustness"]["U-Net Dice"]["cell"]
    assert noisy["delta"] == noisy["noisy"] - noisy["clean"]
    assert m["robustness"]["Mask R-CNN"]["objects_true"]["delta"] == 0  # same images, same truth


def test_counting_quick_counts_reviews_and_retrains(quick_run):
    m = quick_run["notebooks"]["09_counting"]["metrics"]
    assert m["dataset"] == "synthetic" and m["images"] > 0 and m["reviewed"] == 3 and m["counted_split"] == "test"
    assert m["scored_before_after"] == m["images"] - m["reviewed"]  # scored on the counted images nobody reviewed
    assert sum(m["counts"].values()) > 0 and set(m["count_error"]) == set(m["counts"])
    assert set(m["before_after"]) == {"before", "after"}
    assert all(0 <= v["mAP50"] <= 1 for v in m["before_after"].values())
