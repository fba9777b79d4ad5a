"""The recipe study's entries: every entry builds a valid config, branches keep their parent's past."""
import pytest


def test_every_entry_builds_and_branches_keep_the_parents_past(tmp_path):
    from sissi_d2.experiments import study
    from sissi_d2.experiments.rows import past_differences

    names = [e.name for e in study.ENTRIES]
    assert len(names) == len(set(names))
    for e in study.ENTRIES:
        if e.kind == "fusion":
            assert study.entry(e.parent).kind == "train" and e.grid
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
