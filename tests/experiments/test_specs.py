"""Table 1's row declarations: which overrides reach which row, and what each row records."""
import os

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_trunk_overrides_reach_the_trunk_alone_and_every_row_gets_the_common_ones(tmp_path):
    from sissi_d2.experiments.specs import PAPER_ROWS, row_configs

    cfgs = row_configs(PAPER_ROWS, os.path.join(ROOT, "configs"), str(tmp_path), ["SOLVER.BASE_LR", "0.5"],
                       trunk_opts=["SISSI.ADELE.TRACK", "True"])
    assert cfgs["weak_only"].SISSI.ADELE.TRACK  # the paper configs leave it off: tools/table1.py turns it on
    assert not any(cfgs[k].SISSI.ADELE.TRACK for k in ("baseline", "sissi_s", "oracle"))
    assert all(c.SOLVER.BASE_LR == 0.5 for c in cfgs.values())
    assert {k: c.OUTPUT_DIR for k, c in cfgs.items()} == {r.key: os.path.join(str(tmp_path), r.key) for r in PAPER_ROWS}
    # the common overrides come last: a user can still turn the trunk's curve off
    off = row_configs(PAPER_ROWS[:1], os.path.join(ROOT, "configs"), str(tmp_path), ["SISSI.ADELE.TRACK", "False"],
                      trunk_opts=["SISSI.ADELE.TRACK", "True"])
    assert not off["weak_only"].SISSI.ADELE.TRACK


def test_the_cpu_rows_record_the_signals_they_read_and_the_oracle_none(tmp_path):
    from sissi_d2.engine.start_rules import MEMORISATION, SOURCE_VAL, recorded_signals
    from sissi_d2.experiments.specs import PAPER_ROWS, row_configs

    cfgs = row_configs(PAPER_ROWS, os.path.join(ROOT, "configs", "cpu"), str(tmp_path),
                       trunk_opts=["SISSI.ADELE.TRACK", "True"])
    assert recorded_signals(cfgs["weak_only"]) == {MEMORISATION, SOURCE_VAL}  # what the branches read
    assert recorded_signals(cfgs["adele_sissi_s"]) >= {MEMORISATION}
    assert recorded_signals(cfgs["sissi_s"]) >= {SOURCE_VAL}
    assert recorded_signals(cfgs["oracle"]) == frozenset()  # it never corrects: 24 s per epoch saved
