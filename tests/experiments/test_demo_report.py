"""The demo report's reading of its own table (experiments.demo.interpretation), without a model."""
from sissi_d2.experiments.demo import interpretation


def _rows(weak_test, weak_only, adele, baseline):
    return [{"key": k, "metrics": {"AP50": v}} for k, v in
            (("weak_labels_test", weak_test), ("weak_only", weak_only), ("adele_sissi_s", adele), ("baseline", baseline))]


def _quality(weak, *rounds):
    out = [{"labels": "weak labels", "metrics": {"F1_50": weak[0], "false_positives": weak[1]}}]
    out += [{"labels": f"pseudo-labels, epoch {15 + i}", "metrics": {"F1_50": f1, "false_positives": fp}}
            for i, (f1, fp) in enumerate(rounds)]
    return out


def test_premise_fails_and_labels_decay():
    info = {"memorisation": {"epochs": [0, 1, 2], "ap50": [0.1, 0.5, 0.739]}}
    text = interpretation(_rows(55.9, 44.8, 23.8, 44.8), _quality((58.2, 36.6), (65.9, 29.1), (53.6, 46.9)), info)
    assert "**The premise fails.**" in text and "44.8" in text and "55.9" in text
    assert "By epoch 2" in text and "73.9 % AP50" in text
    assert "A+SISSI(S) ends below Weak-only" in text
    assert "beat the weak labels" in text
    assert "got worse round after round (F1 65.9 -> 53.6; false positives 29.1 % -> 46.9 %)" in text


def test_premise_holds_and_labels_hold():
    text = interpretation(_rows(46.1, 54.3, 54.1, 54.3), _quality((58.5, 35.1), (67.7, 20.0), (67.6, 21.0)), {})
    assert "**The premise holds.**" in text and "premise fails" not in text
    assert "level with Weak-only" in text
    assert "round after round" not in text  # 0.1 F1 lost: no decay reported


def test_pseudo_labels_worse_than_weak_labels():
    text = interpretation(_rows(46.1, 40.0, 30.0, 40.0), _quality((58.5, 35.1), (50.0, 40.0), (45.0, 50.0)), {})
    assert "stayed worse than the weak labels" in text
    assert "By epoch" not in text  # no memorisation record, no claim about it


def test_oracle_below_the_weak_labels_means_the_budget_caps_the_detector():
    rows = _rows(55.9, 35.3, 26.0, 35.3) + [{"key": "oracle", "metrics": {"AP50": 49.8}}]
    text = interpretation(rows, _quality((58.2, 36.6), (61.5, 25.0)), {})
    assert "**The premise fails.**" in text
    assert "**The budget caps the detector.**" in text and "49.8" in text
    assert "What the labels cost" not in text


def test_oracle_above_the_weak_labels_says_what_the_labels_cost():
    rows = _rows(53.4, 46.9, 40.3, 46.9) + [{"key": "oracle", "metrics": {"AP50": 64.6}}]
    text = interpretation(rows, _quality((58.2, 36.6), (61.5, 25.0)), {})
    assert "**What the labels cost.**" in text
    assert "Weak-only 17.7 AP50 below it" in text  # 64.6 - 46.9
    assert "scores 83 % of it" in text  # 53.4 / 64.6
    assert "budget caps" not in text


def test_no_oracle_row_no_oracle_sentence():
    text = interpretation(_rows(53.4, 46.9, 40.3, 46.9), _quality((58.2, 36.6), (61.5, 25.0)), {})
    assert "Oracle" not in text and "budget caps" not in text


def test_premise_fails_but_beats_the_unranked_labels():
    rows = _rows(53.4, 48.6, 31.5, 48.6) + [{"key": "weak_labels_test_unranked", "metrics": {"AP50": 38.7}}]
    text = interpretation(rows, _quality((58.2, 36.6), (64.2, 27.4)), {})
    assert "**The premise fails.**" in text and "It does beat the same boxes unranked (38.7 AP50" in text
    rows[-1]["metrics"]["AP50"] = 50.0  # above Weak-only: no such sentence
    assert "unranked" not in interpretation(rows, _quality((58.2, 36.6), (64.2, 27.4)), {})
