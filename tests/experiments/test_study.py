"""The recipe study's entries: every entry builds a valid config, branches keep their parent's past."""
import pytest


def test_every_entry_builds_and_branches_keep_the_parents_past(tmp_path):
    from sissi_d2.experiments import study
    from sissi_d2.experiments.rows import past_differences

    names = [e.name for e in study.ENTRIES]
    assert len(names) == len(set(names))
    for e in study.ENTRIES:
        if e.kind == "fusion":
            assert study.entry(e.parent).kind in ("train", "repaired") and e.grid
            # a flip subset is fused from the views the sweep computed: the recipe's four flips
            flips = study.entry_config(study.entry(e.parent), str(tmp_path), study.FLIP_VIEWS).SISSI.PSEUDO.FLIPS
            assert all(set(v) <= set(flips) for v in e.grid.get("SISSI.PSEUDO.FLIPS", [])), e.name
            continue
        cfg = study.entry_config(e, str(tmp_path))
        assert cfg.OUTPUT_DIR == str(tmp_path / e.name)
        if e.kind == "branch":
            parent = study.entry_config(study.entry(e.parent), str(tmp_path))
            assert study.entry(e.parent).kind == "train"
            assert cfg.SISSI.START_RULE == f"epoch:{e.start_epoch}"
            assert 0 < e.start_epoch < cfg.SISSI.EPOCHS
            # only what happens after the correction starts may differ from the parent
            assert past_differences(cfg, parent) == [], e.name


def test_unknown_entry_and_test_of_a_non_final_entry(tmp_path):
    from sissi_d2.experiments import study

    with pytest.raises(KeyError, match="unknown study entry"):
        study.entry("nope")
    fusion = next(e for e in study.ENTRIES if not e.final)
    with pytest.raises(ValueError, match="not a final setting"):
        study.test_entry(fusion.name, str(tmp_path))


def test_median_box_scale_matches_one_to_one():
    import numpy as np

    from sissi_d2.experiments.study import median_box_scale

    ref = {"a": np.array([[0, 0, 10, 20], [50, 50, 60, 60]], float)}
    pred = {"a": (np.array([[0, 0, 11, 22], [50, 50, 62, 61], [0, 0, 9, 19], [80, 80, 90, 90]], float),
                  np.array([0.9, 0.8, 0.2, 0.9]))}
    # the low-score box is ignored, the unmatched one too: ratios (1.1, 1.1) and (1.2, 1.1)
    assert median_box_scale(ref, pred) == [1.15, 1.1]
    assert median_box_scale(ref, {}) is None


def test_the_cpu_rows_train_the_recipes_trunk(tmp_path):
    """configs/cpu/ (Table 1's CPU rows) and the study's recipe entries on the light model train
    the same weights: a Table 1 run can reuse the entries' trunk and Oracle, and the recipe has
    one definition per setting (the yaml) checked against the study's override lists here."""
    import os

    from sissi_d2.config_builder import build_config
    from sissi_d2.experiments import study
    from sissi_d2.experiments.rows import past_differences, row_settings

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    for row, name in (("weak_only", "r5_weak_only_light"), ("oracle", "r5_oracle_light")):
        cfg = build_config(os.path.join(root, "configs", "cpu", f"{row}.yaml"), ["OUTPUT_DIR", str(tmp_path / row)])
        entry_cfg = study.entry_config(study.entry(name), str(tmp_path))
        assert past_differences(cfg, entry_cfg) == [], row
        a, b = row_settings(cfg), row_settings(entry_cfg)
        differ = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
        # the Oracle records no start signal (it never corrects), the entry did: same weights
        signals = {"SISSI.ADELE.TRACK", "SISSI.SOURCE_VAL_DATASETS"} if row == "oracle" else set()
        assert differ <= {"DATASETS.TEST", "SISSI.DISK.KEEP_LAST"} | signals | {
            k for k in differ if k.startswith("SISSI.PSEUDO.")}, (row, differ)


def test_the_brake_entries_differ_from_table1_rows_only_by_their_brakes(tmp_path):
    import os

    from sissi_d2.config_builder import build_config
    from sissi_d2.experiments import study
    from sissi_d2.experiments.rows import row_settings

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    for row, name in (("adele_sissi_s", "r3_b12_clone_ema_vote"), ("plain_adele", "r3_b12_plain_ema_vote")):
        a = row_settings(build_config(os.path.join(root, "configs", "cpu", f"{row}.yaml"), []))
        b = row_settings(study.entry_config(study.entry(name), str(tmp_path)))
        differ = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
        # the brake entries were measured on the recipe's model with P2 (study.P2_MODEL)
        model = set(study.LIGHT_MODEL[::2])
        assert differ - model == {"SISSI.START_RULE", "SISSI.PSEUDO.TEACHER", "SISSI.PSEUDO.WEAK_LABEL_WEIGHT",
                                  "DATASETS.TEST", "SISSI.DISK.KEEP_LAST"}, (row, differ)
        b_pinned = row_settings(study.entry_config(study.entry(name), str(tmp_path), study.LIGHT_MODEL))
        assert not {k for k in model if a.get(k) != b_pinned.get(k)}, row


def test_the_studies_measured_with_p2_keep_that_model(tmp_path):
    """The recipe dropped P2 after the label-budget, points and demo reports were measured: each
    of them pins the model it was measured with, which is the P2 trunk's (entry r3_weak_only)."""
    import os

    from sissi_d2.config_builder import build_config
    from sissi_d2.experiments import label_budget, points, study
    from sissi_d2.experiments.rows import row_settings

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    model = study.P2_MODEL[::2]
    p2 = row_settings(study.entry_config(study.entry("r3_weak_only"), str(tmp_path)))
    recipe = row_settings(build_config(os.path.join(root, "configs", "cpu", "weak_only.yaml"), []))
    assert recipe["MODEL.FPN.IN_FEATURES"] != p2["MODEL.FPN.IN_FEATURES"]  # the recipe itself moved
    for name in ("real", "full"):
        plan = label_budget.PLANS[name]
        cfg = build_config(os.path.join(plan.config_dir, "weak_only.yaml"), list(plan.opts))
        setting = points.SETTINGS[name]
        cfg_points = build_config(os.path.join(root, setting.config), points.setting_opts(setting))
        for pinned in (row_settings(cfg), row_settings(cfg_points)):
            assert {k: pinned[k] for k in model} == {k: p2[k] for k in model}, name
    demo = row_settings(build_config(os.path.join(root, "configs", "demo", "weak_only.yaml"), []))
    assert {k: demo[k] for k in model if k != "MODEL.FPN.OUT_CHANNELS"} == {
        k: p2[k] for k in model if k != "MODEL.FPN.OUT_CHANNELS"}


def test_a_retrain_entry_trains_the_trunk_on_its_parents_last_labels(tmp_path):
    from sissi_d2.experiments import study
    from sissi_d2.experiments.rows import past_differences

    for e in (e for e in study.ENTRIES if e.kind == "retrain"):
        parent = study.entry(e.parent)
        assert parent.kind == "branch" and e.final
        labels = study.entry_labels(e, str(tmp_path))
        assert labels == str(tmp_path / e.parent / "sissi" / "pseudo_labels" / f"epoch_{e.start_epoch - 1:04d}.json")
        cfg = study.entry_config(e, str(tmp_path))
        assert cfg.SISSI.TARGET_DATASETS == (f"{e.parent}_e{e.start_epoch - 1}",)
        assert any(spec.endswith("=coco:" + labels) for spec in cfg.SISSI.REGISTER)
        # the trunk's settings otherwise: only the target labels differ from the trunk's
        trunk = study.entry_config(study.entry(parent.parent), str(tmp_path))
        assert set(past_differences(cfg, trunk)) <= {"SISSI.TARGET_DATASETS", "SISSI.REGISTER"}
        assert "SISSI.TARGET_DATASETS" in past_differences(cfg, trunk)
        # its parent has not run: a clear error naming the file and the command, before any training
        with pytest.raises(FileNotFoundError, match=f"run {e.parent}"):
            study.run_entry(e.name, str(tmp_path))


def test_a_repaired_entry_trains_the_trunk_on_weak_labels_repaired_from_the_truth(tmp_path):
    from sissi_d2.data.label_repair import REPAIRS
    from sissi_d2.experiments import study
    from sissi_d2.experiments.rows import past_differences

    repaired = [e for e in study.ENTRIES if e.kind == "repaired"]
    assert sorted(r for e in repaired for r in e.repairs) == sorted(REPAIRS)
    trunk = study.entry_config(study.entry("r5_weak_only_light"), str(tmp_path))
    for e in repaired:
        assert e.final
        labels = study.entry_labels(e, str(tmp_path))
        assert labels == str(tmp_path / e.name / "repaired_labels.json")
        cfg = study.entry_config(e, str(tmp_path))
        assert cfg.SISSI.TARGET_DATASETS == (e.name,)
        assert cfg.SISSI.REGISTER == (f"{e.name}=coco:{labels}",)
        # the recipe's trunk (configs/cpu/weak_only.yaml) but for the labels it trains on (and, for
        # crowd regions, the heads that read them)
        heads = {"MODEL.PROPOSAL_GENERATOR.NAME", "MODEL.ROI_HEADS.NAME", "MODEL.MISSING_LABELS.SKIP_CONFIDENT",
                 "MODEL.MISSING_LABELS.IGNORE_CROWD"} if e.ignore_missed else set()
        assert set(past_differences(cfg, trunk)) == {"SISSI.TARGET_DATASETS", "SISSI.REGISTER"} | heads
    assert [e.name for e in repaired if e.ignore_missed] == ["r8_ignore_missed_cells"]


def test_a_repaired_entry_without_weak_labels_names_the_command(tmp_path):
    from sissi_d2.experiments import study

    e = next(e for e in study.ENTRIES if e.kind == "repaired")
    with pytest.raises(FileNotFoundError, match="make_weak_labels.py"):
        study.write_repaired_labels(e, str(tmp_path), weak_dataset="no_such_weak_labels")


def test_a_repaired_entrys_labels_are_written_and_registered_as_its_target(tmp_path, tiny_datasets, monkeypatch):
    """On the tiny set: tiny_target keeps half of the cells of the images whose truth this test draws
    again; repairing the missed cells gives every cell its box, in a data set the entry's config
    registers under its own name."""
    import numpy as np
    from detectron2.data import DatasetCatalog

    from sissi_d2.config_builder import register_from_spec
    from sissi_d2.data.label_files import image_key, load_coco_boxes, read_label_json
    from sissi_d2.experiments import study
    from sissi_d2.experiments.report import dataset_truth

    from ..conftest import write_tiny_dataset

    truth = write_tiny_dataset(str(tmp_path / "truth"), 4, 2, 1.0)  # tiny_target's images, every box
    DatasetCatalog.register("tiny_target_truth", lambda: [dict(r) for r in truth])
    try:
        monkeypatch.setattr(study, "TRAIN_TRUTH", "tiny_target_truth")
        e = study.entry("r6_repair_missed_cells")
        path = study.write_repaired_labels(e, str(tmp_path / "out"), weak_dataset="tiny_target")
        written = read_label_json(path)
        true_boxes = dataset_truth("tiny_target_truth")
        weak = {image_key(r): len(r["annotations"]) for r in DatasetCatalog.get("tiny_target")}
        assert sum(weak.values()) < sum(len(b) for b in true_boxes.values())  # cells were missing
        for key, boxes in true_boxes.items():
            got = written[key][0]
            assert len(got) == len(boxes)  # tiny_target has no false boxes: the truth, every cell once
            assert np.allclose(np.sort(got, axis=0), np.sort(boxes, axis=0), atol=0.01)
        cfg = study.entry_config(e, str(tmp_path / "out"))
        for spec in cfg.SISSI.REGISTER:
            register_from_spec(spec)
        assert sum(len(r["annotations"]) for r in DatasetCatalog.get(e.name)) == sum(len(b) for b in true_boxes.values())
        # the missed cells as crowd regions instead: the weak labels stay the labels, the cells they
        # miss are written as regions that the mapper hands to the heads as neither cell nor background
        e = study.entry("r8_ignore_missed_cells")
        path = study.write_repaired_labels(e, str(tmp_path / "out"), weak_dataset="tiny_target")
        labels = read_label_json(path)
        assert {k: len(b) for k, (b, _) in labels.items()} == weak
        crowd = sum(1 for r in load_coco_boxes(path) for a in r["annotations"] if a.get("iscrowd"))
        assert crowd == sum(len(b) for b in true_boxes.values()) - sum(weak.values())
    finally:
        DatasetCatalog.remove("tiny_target_truth")


def test_another_seed_runs_in_its_own_folder_with_every_entry_and_parent_on_that_seed(tmp_path):
    from sissi_d2.experiments import study

    assert study.seed_setting(str(tmp_path), None) == (str(tmp_path), [])
    out, extra = study.seed_setting(str(tmp_path), 3)
    assert out == str(tmp_path / "seed3") and extra == ["SEED", "3"]
    for name in ("r6_repair_missed_cells", "r5_weak_only_light", "r3_b12_plain_ema_vote"):
        e = study.entry(name)
        cfg = study.entry_config(e, out, extra)
        assert cfg.SEED == 3 and cfg.OUTPUT_DIR == str(tmp_path / "seed3" / name)
        assert study.entry_config(e, str(tmp_path)).SEED != 3


def test_the_repair_figure_shows_the_scored_entries(tmp_path):
    import json
    import os

    from sissi_d2.experiments import study

    assert study.repair_figure(str(tmp_path), str(tmp_path / "f.png")) is None  # nothing scored yet
    for name, ap50 in (("r5_weak_only_light", 52.0), ("r6_repair_missed_cells", 58.0)):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "test.json").write_text(json.dumps({"AP50": ap50, "AP75": 8.0, "AP": 19.0, "AR": 28.0}))
    png = study.repair_figure(str(tmp_path), str(tmp_path / "figs" / "f.png"))
    assert png == str(tmp_path / "figs" / "f.png") and os.path.getsize(png) > 1000
    assert "study_repaired_weak_labels.png" in study.study_report(str(tmp_path), str(tmp_path / "figs"))


def test_the_unlabelled_cells_figure_shows_the_fusion_entries_that_scored_cells(tmp_path):
    import json
    import os

    from sissi_d2.experiments import study

    assert study.unlabelled_cells_figure(str(tmp_path), str(tmp_path / "f.png")) is None  # nothing ran yet
    os.makedirs(tmp_path / "r5_fusion_e9_flips")  # an older fusion entry: no cell scores, left out
    (tmp_path / "r5_fusion_e9_flips" / "study.json").write_text(json.dumps({"grid": []}))
    assert study.unlabelled_cells_figure(str(tmp_path), str(tmp_path / "f.png")) is None
    scores = {g: {"cells": n, "median_score": 0.5, "scored_at_least": {"0.05": n // 2, "0.5": n // 4}}
              for g, n in (("labelled", 100), ("unlabelled", 20))}
    name = "r7_fusion_e20_r7_missing_label_heads_s05"
    os.makedirs(tmp_path / name)
    (tmp_path / name / "study.json").write_text(json.dumps({"grid": [], "cell_scores_by_weak_labelling": scores}))
    png = study.unlabelled_cells_figure(str(tmp_path), str(tmp_path / "figs" / "f.png"))
    assert png == str(tmp_path / "figs" / "f.png") and os.path.getsize(png) > 1000
    assert "study_unlabelled_cell_scores.png" in study.study_report(str(tmp_path), str(tmp_path / "figs"))
