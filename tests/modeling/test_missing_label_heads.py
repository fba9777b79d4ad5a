"""MissingLabelRPN / MissingLabelROIHeads: Detectron2's heads, with relaxed training losses only."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from sissi_d2.modeling import MissingLabelROIHeads, MissingLabelRPN
from tests.conftest import tiny_config

HEADS = ("MODEL.PROPOSAL_GENERATOR.NAME", "MissingLabelRPN", "MODEL.ROI_HEADS.NAME", "MissingLabelROIHeads")


def _batch():
    g = torch.Generator().manual_seed(0)
    out = []
    for boxes in ([[8.0, 8, 40, 40], [50, 50, 90, 80]], []):
        inst = Instances((96, 96))
        inst.gt_boxes = Boxes(torch.tensor(boxes).reshape(-1, 4))
        inst.gt_classes = torch.zeros(len(boxes), dtype=torch.long)
        out.append({"image": (torch.rand(3, 96, 96, generator=g) * 255).round(), "instances": inst,
                    "height": 96, "width": 96})
    return out


def _models(tmp_path, *opts):
    torch.manual_seed(3)
    ours = build_model(tiny_config(tmp_path, *HEADS, *opts))
    torch.manual_seed(3)
    theirs = build_model(tiny_config(tmp_path))
    return ours, theirs


def test_they_are_built_from_the_config_as_detectron2s_heads_with_the_same_weights(tmp_path):
    ours, theirs = _models(tmp_path, "MODEL.MISSING_LABELS.MIN_SCORE", "0.6", "MODEL.MISSING_LABELS.MAX_IOU", "0.2")
    assert isinstance(ours.proposal_generator, MissingLabelRPN) and isinstance(ours.roi_heads, MissingLabelROIHeads)
    assert (ours.roi_heads.missing_label_min_score, ours.roi_heads.missing_label_max_iou) == (0.6, 0.2)
    assert ours.proposal_generator.missing_label_min_score == 0.6
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same seed, same init
    ours.eval(), theirs.eval()
    with torch.no_grad():
        x, y = ours(_batch()), theirs(_batch())
    for p, q in zip(x, y):  # inference is Detectron2's
        assert torch.equal(p["instances"].pred_boxes.tensor, q["instances"].pred_boxes.tensor)


def _training_losses(tmp_path, *opts):
    """One training forward of our heads and of Detectron2's on the same batch and seed: both
    losses and what our heads logged."""
    ours, theirs = _models(tmp_path, *opts)
    ours.train(), theirs.train()
    with EventStorage() as storage:
        torch.manual_seed(0)
        a = ours(_batch())
        torch.manual_seed(0)
        b = theirs(_batch())
        logged = {k: v.latest() for k, v in storage.histories().items() if "ignored" in k}
    return a, b, logged


def test_with_no_confident_negative_the_losses_are_detectron2s(tmp_path):
    a, b, logged = _training_losses(tmp_path, "MODEL.MISSING_LABELS.MIN_SCORE", "1.0")
    assert logged["roi_head/ignored_negatives"] == 0.0
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k]) for k in a)


def test_the_roi_head_leaves_out_exactly_the_confident_proposals_away_from_every_label(tmp_path):
    heads = build_model(tiny_config(tmp_path, *HEADS)).roi_heads  # MIN_SCORE 0.7, MAX_IOU 0.1
    p = Instances((96, 96))
    p.proposal_boxes = Boxes(torch.tensor([[8.0, 8, 40, 40], [60, 60, 90, 90], [12, 12, 44, 44], [60, 0, 90, 20]]))
    p.gt_boxes = Boxes(torch.tensor([[8.0, 8, 40, 40]] * 4))  # each proposal's matched label
    p.gt_classes = torch.tensor([0, 1, 1, 1])  # a positive, then three negatives (background = 1)
    cell = torch.tensor([5.0, 5.0, 5.0, -5.0])  # cell logits against background 0: p ~ 0.99 / 0.007
    scores = torch.stack([cell, torch.zeros(4)], dim=1)
    with EventStorage() as storage:
        relaxed = heads._relax_targets(scores, [p])
        assert storage.history("roi_head/ignored_negatives").latest() == pytest.approx(1 / 3)
        loss = heads.box_predictor.losses((scores, torch.zeros(4, 8)), relaxed)["loss_cls"]
    # far and confident: out; overlapping the label (IoU 0.6): kept; far but unsure: kept
    assert relaxed[0].gt_classes.tolist() == [0, -100, 1, 1]
    assert p.gt_classes.tolist() == [0, 1, 1, 1]  # the caller's proposals are untouched
    kept = torch.nn.functional.cross_entropy(scores[[0, 2, 3]], torch.tensor([0, 1, 1]))
    assert torch.isfinite(loss) and torch.allclose(loss, kept)


def test_an_image_whose_every_proposal_would_be_left_out_keeps_its_loss(tmp_path):
    heads = build_model(tiny_config(tmp_path, *HEADS)).roi_heads
    p = Instances((96, 96))  # an image without labels: no gt_boxes, everything is background
    p.proposal_boxes = Boxes(torch.tensor([[0.0, 0, 20, 20], [30, 30, 60, 60]]))
    p.gt_classes = torch.tensor([1, 1])
    scores = torch.tensor([[5.0, 0.0], [5.0, 0.0]])
    with EventStorage():
        relaxed = heads._relax_targets(scores, [p])
        loss = heads.box_predictor.losses((scores, torch.zeros(2, 8)), relaxed)["loss_cls"]
    assert relaxed[0].gt_classes.tolist() == [1, 1]
    assert torch.isfinite(loss) and loss > 0


def test_the_rpn_leaves_out_confident_anchors_away_from_every_label(tmp_path):
    rpn = build_model(tiny_config(tmp_path, *HEADS, "MODEL.MISSING_LABELS.MIN_SCORE", "0.5")).proposal_generator
    anchors = [Boxes(torch.tensor([[8.0, 8, 40, 40], [60, 60, 90, 90], [12, 12, 44, 44], [0, 60, 20, 90]]))]
    label = torch.tensor([[8.0, 8, 40, 40]]).expand(4, 4)
    gt_labels = [torch.tensor([1, 0, 0, 0])]
    logits = [torch.tensor([[3.0, 3.0, 3.0, -3.0]])]
    deltas = [torch.zeros(1, 4, 4)]
    with EventStorage() as storage:
        ours = rpn.losses(anchors, logits, gt_labels, deltas, [label])
        assert storage.history("rpn/ignored_negatives").latest() == pytest.approx(1 / 3)
        # Detectron2's loss with anchor 1 (confident, IoU 0 with the label) not sampled
        assert pairwise_iou(anchors[0], Boxes(label[:1]))[:, 0].tolist()[1] == 0.0
        theirs = RPN.losses(rpn, anchors, logits, [torch.tensor([1, -1, 0, 0])], deltas, [label])
        plain = RPN.losses(rpn, anchors, logits, gt_labels, deltas, [label])
    assert torch.allclose(ours["loss_rpn_cls"], theirs["loss_rpn_cls"])
    assert ours["loss_rpn_cls"] < plain["loss_rpn_cls"]


def test_training_steps_log_the_share_left_out_and_give_finite_losses(tmp_path):
    ours, _ = _models(tmp_path, "MODEL.MISSING_LABELS.MIN_SCORE", "0.5")
    ours.train()
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.01)
    with EventStorage() as storage:
        for _ in range(2):
            losses = ours(_batch())
            assert all(torch.isfinite(v) for v in losses.values())
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
        for name in ("rpn/ignored_negatives", "roi_head/ignored_negatives"):
            assert 0.0 <= storage.history(name).latest() <= 1.0
        assert storage.history("rpn/ignored_negatives").latest() > 0  # a fresh RPN scores ~0.5


def test_predicting_boxes_for_training_is_refused(tmp_path):
    with pytest.raises(ValueError, match="TRAIN_ON_PRED_BOXES"):
        build_model(tiny_config(tmp_path, *HEADS, "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES", "True"))


CROWD_ONLY = ("MODEL.MISSING_LABELS.SKIP_CONFIDENT", "False", "MODEL.MISSING_LABELS.IGNORE_CROWD", "True")


def _with_crowd(boxes, crowd):
    inst = Instances((96, 96))
    inst.gt_boxes = Boxes(torch.tensor(boxes + crowd).reshape(-1, 4))
    inst.gt_classes = torch.zeros(len(boxes) + len(crowd), dtype=torch.long)
    inst.gt_ignore = torch.tensor([False] * len(boxes) + [True] * len(crowd), dtype=torch.bool)
    return inst


def test_without_the_confidence_rule_and_crowd_regions_the_losses_are_detectron2s(tmp_path):
    a, b, logged = _training_losses(tmp_path, "MODEL.MISSING_LABELS.SKIP_CONFIDENT", "False",
                                    "MODEL.MISSING_LABELS.MIN_SCORE", "0.01")  # the rule would skip nearly all if on
    assert logged == {}  # no share logged: nothing of ours ran
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k]) for k in a)


def test_the_rpn_makes_anchors_near_a_crowd_region_neither_cells_nor_background(tmp_path):
    rpn = build_model(tiny_config(tmp_path, *HEADS, *CROWD_ONLY)).proposal_generator
    anchors = [Boxes(torch.tensor([[8.0, 8, 40, 40], [50, 50, 90, 80], [52, 52, 92, 82], [0, 60, 20, 90]]))]
    target = _with_crowd([[8.0, 8, 40, 40]], [[50.0, 50, 90, 80]])
    with EventStorage() as storage:
        (labels,), (matched,) = rpn.label_and_sample_anchors(anchors, [target])
        assert storage.history("rpn/crowd_ignored_negatives").latest() == pytest.approx(2 / 3)
    (plain,), (plain_matched,) = RPN.label_and_sample_anchors(rpn, anchors, [target[~target.gt_ignore]])
    # Detectron2 without the crowd region: the label's anchor is a cell, the other three background;
    # with it, the two anchors on the region are neither, the far one stays background
    assert plain.tolist() == [1, 0, 0, 0] and labels.tolist() == [1, -1, -1, 0]
    assert torch.equal(matched, plain_matched)  # boxes are matched to the labels only


def test_the_roi_head_leaves_proposals_on_a_crowd_region_out_and_never_proposes_the_region(tmp_path):
    heads = build_model(tiny_config(tmp_path, *HEADS, *CROWD_ONLY)).roi_heads
    p = Instances((96, 96))
    p.proposal_boxes = Boxes(torch.tensor([[50.0, 50, 90, 80], [54, 54, 92, 82], [0, 60, 20, 90], [30, 0, 60, 20]]))
    p.objectness_logits = torch.zeros(4)
    target = _with_crowd([[8.0, 8, 40, 40]], [[50.0, 50, 90, 80]])
    with EventStorage() as storage:
        (sampled,) = heads.label_and_sample_proposals([p], [target])
        boxes = sampled.proposal_boxes.tensor.tolist()
        # the label is added as a proposal (PROPOSAL_APPEND_GT), the crowd region is not added twice
        assert boxes.count([8.0, 8, 40, 40]) == 1 and boxes.count([50.0, 50, 90, 80]) == 1
        near = {tuple(b): bool(n) for b, n in zip(boxes, sampled.near_crowd)}
        assert near == {(8.0, 8, 40, 40): False, (50.0, 50, 90, 80): True, (54.0, 54, 92, 82): True,
                        (0.0, 60, 20, 90): False, (30.0, 0, 60, 20): False}
        scores = torch.zeros(len(sampled), 2)
        relaxed = heads._relax_targets(scores, [sampled])
        assert storage.history("roi_head/crowd_ignored_negatives").latest() == pytest.approx(2 / 4)
        assert "roi_head/ignored_negatives" not in storage.histories()  # the confidence rule is off
    classes = {tuple(b): int(c) for b, c in zip(boxes, relaxed[0].gt_classes)}
    assert classes == {(8.0, 8, 40, 40): 0, (50.0, 50, 90, 80): -100, (54.0, 54, 92, 82): -100,
                       (0.0, 60, 20, 90): 1, (30.0, 0, 60, 20): 1}


def test_training_with_crowd_regions_gives_finite_losses_and_logs_their_shares(tmp_path):
    ours, _ = _models(tmp_path, *CROWD_ONLY)
    ours.train()
    batch = _batch()
    batch[0]["instances"] = _with_crowd([[8.0, 8, 40, 40]], [[50.0, 50, 90, 80]])
    batch[1]["instances"] = _with_crowd([], [])
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.01)
    with EventStorage() as storage:
        for _ in range(2):
            losses = ours(batch)
            assert all(torch.isfinite(v) for v in losses.values())
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
        assert storage.history("rpn/crowd_ignored_negatives").latest() > 0
        assert 0.0 <= storage.history("roi_head/crowd_ignored_negatives").latest() <= 1.0
