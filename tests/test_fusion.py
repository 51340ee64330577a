"""Batch norms folded into convolutions (``emotion.models.fusion``): the same outputs
within float rounding, in the networks the predictor runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from emotion.models.fusion import fold_batch_norms


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
                        nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):  # statistics and affine terms away from identity
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            nn.init.uniform_(module.weight, 0.5, 2)
            nn.init.uniform_(module.bias, -1, 1)
    return net.eval()


def test_folding_keeps_the_outputs_and_removes_every_batch_norm():
    net = _net().to(memory_format=torch.channels_last)
    pixels = torch.randn(2, 3, 16, 16).to(memory_format=torch.channels_last)
    with torch.no_grad():
        before = net(pixels)
        assert fold_batch_norms(net) == 2
        after = net(pixels)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert net[0][0].weight.is_contiguous(memory_format=torch.channels_last)


def test_a_network_in_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(_net().train())


def test_the_predictors_networks_are_folded_and_score_as_the_checkpoint_does(sample_photos):
    from emotion.models.loading import build_emotion_model
    from emotion.predictor import build_predictor
    from tests.configs import composed

    predictor = build_predictor(composed("tag", ["model.device=cpu", "detector.device=cpu"]))
    for network in (predictor.model, predictor.detector):
        assert not any(isinstance(m, nn.BatchNorm2d) for m in network.modules())
    data = sample_photos["obama"].read_bytes()
    people = predictor.detect(predictor.decode(["obama.jpg"], [data]))
    crops = {level: np.asarray(people[f"crop_{level}"]) for level in predictor.levels}
    unfolded = build_emotion_model(composed("tag", ["model.device=cpu"])["model"])
    np.testing.assert_allclose(predictor.model.predict(crops)["scores"], unfolded.predict(crops)["scores"], atol=1e-5)
