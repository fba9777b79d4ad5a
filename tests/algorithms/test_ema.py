"""The EMA teacher: the update rule on state dicts, and the teacher's life cycle on a module."""
import pytest
import torch
from torch import nn

from sissi_d2.algorithms.ema import EMATeacher, ema_update_


def test_update_moves_floats_by_one_minus_momentum_and_copies_counters():
    teacher = {"w": torch.zeros(3), "n": torch.tensor(1)}
    student = {"w": torch.full((3,), 10.0), "n": torch.tensor(7)}
    ema_update_(teacher, student, 0.9)
    assert torch.allclose(teacher["w"], torch.full((3,), 1.0))
    assert int(teacher["n"]) == 7
    ema_update_(teacher, student, 0.9)
    assert torch.allclose(teacher["w"], torch.full((3,), 1.9))  # 0.9 * 1 + 0.1 * 10


def test_momentum_one_freezes_and_zero_copies():
    t1, t0 = {"w": torch.ones(2)}, {"w": torch.ones(2)}
    ema_update_(t1, {"w": torch.full((2,), 5.0)}, 1.0)
    ema_update_(t0, {"w": torch.full((2,), 5.0)}, 0.0)
    assert torch.equal(t1["w"], torch.ones(2)) and torch.equal(t0["w"], torch.full((2,), 5.0))


def test_bad_momentum_and_mismatched_keys_are_errors():
    with pytest.raises(ValueError, match="EMA_MOMENTUM"):
        EMATeacher(1.5)
    with pytest.raises(ValueError, match="EMA_MOMENTUM"):
        ema_update_({"w": torch.ones(1)}, {"w": torch.ones(1)}, -0.1)
    with pytest.raises(KeyError, match="differ"):
        ema_update_({"w": torch.ones(1)}, {"v": torch.ones(1)}, 0.5)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))


def test_teacher_starts_as_a_frozen_copy_then_follows_the_student():
    student = _net()
    teacher = EMATeacher(0.5)
    assert not teacher.started and teacher.state_dict() == {}
    teacher.start(student)
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    before = student[0].weight.detach().clone()
    with torch.no_grad():
        student[0].weight.add_(2.0)
    assert torch.equal(teacher.model[0].weight, before)  # a copy, not a view of the student
    teacher.update(student)
    assert torch.allclose(teacher.model[0].weight, before + 1.0) and teacher.updates == 1


def test_state_dict_round_trip_restores_weights_and_count():
    student = _net()
    teacher = EMATeacher(0.5)
    teacher.start(student)
    with torch.no_grad():
        student[0].weight.mul_(3.0)
    teacher.update(student)
    state = teacher.state_dict()
    again = EMATeacher(0.5)
    again.load_state_dict(state, _net())
    assert again.updates == 1
    for k, v in teacher.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v)
    again.load_state_dict({}, student)  # a checkpoint from before correction: no teacher yet
    assert not again.started
