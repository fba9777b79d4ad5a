"""The masked-image pretext meta-architecture: registered, trainable, and a backbone a detector loads."""
import pytest
import torch
from detectron2.modeling import build_model

from sissi_d2.modeling import MaskedImagePretext
from tests.conftest import tiny_config

PRETEXT = ("MODEL.META_ARCHITECTURE", "MaskedImagePretext", "MODEL.MASKED_PRETEXT.PATCH_SIZE", "16")


def _images(*sizes):
    g = torch.Generator().manual_seed(0)
    return [{"image": (torch.rand(3, h, w, generator=g) * 255).round()} for h, w in sizes]


def test_it_is_built_from_the_config_with_the_detectors_backbone_names(tmp_path):
    model = build_model(tiny_config(tmp_path, *PRETEXT))
    assert isinstance(model, MaskedImagePretext) and model.in_feature == "p2"  # the finest level
    detector = build_model(tiny_config(tmp_path))
    ours = {k for k in model.state_dict() if k.startswith(MaskedImagePretext.TRANSFER_PREFIX)}
    assert ours and ours == {k for k in detector.state_dict() if k.startswith("backbone.")}


def test_an_unknown_level_is_named(tmp_path):
    with pytest.raises(ValueError, match="p9"):
        build_model(tiny_config(tmp_path, *PRETEXT, "MODEL.MASKED_PRETEXT.IN_FEATURE", "p9"))


def test_training_gives_a_loss_that_reaches_the_backbone_and_falls_with_steps(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config(tmp_path, *PRETEXT))
    model.train()
    # smooth images: a hidden square can be told from what surrounds it
    ramp = torch.linspace(0, 255, 96)
    batch = [{"image": ramp.view(1, 1, 96).expand(3, 96, 96).clone()},
             {"image": ramp.flip(0).view(1, 96, 1).expand(3, 96, 96).clone()}]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(25):
        torch.manual_seed(step % 2)  # two fixed masks, as a resumed run reseeds per iteration
        loss = model(batch)["loss_masked_reconstruction"]
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            grad = model.backbone.bottom_up.stem.conv1.weight.grad
            assert grad is not None and grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4


def test_inference_paints_each_image_at_its_own_size_and_never_hides_padding(tmp_path):
    model = build_model(tiny_config(tmp_path, *PRETEXT))
    model.eval()
    with torch.no_grad():
        out = model(_images((96, 64), (70, 96)))
    assert [tuple(o["reconstruction"].shape) for o in out] == [(3, 96, 64), (3, 70, 96)]
    assert [tuple(o["mask"].shape) for o in out] == [(96, 64), (70, 96)]
    assert all(o["mask"].any() and not o["mask"].all() for o in out)
