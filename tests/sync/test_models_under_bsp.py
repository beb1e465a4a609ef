"""Every model trains a few steps under BSP on 2 ranks, at a small width and size, and the two
workers end with the same parameters."""
import numpy as np
import pytest

from tests.sync.helpers import run_rule

# model -> (model_options, image size, channels)
SMALL = {
    "mlp": ("{hidden: [16]}", 6, 2),
    "inception_small": ("{width: 0.1}", 12, 2),
    "googlenet": ("{aux_heads: false}", 80, 3),
    "alexnet": ("{width: 0.0625}", 67, 3),
    "vgg16": ("{width: 0.03125}", 32, 2),
    "resnet50": ("{width: 0.0625}", 32, 2),
    "resnet20": ("{width: 0.25}", 12, 2),
    "resnet56": ("{width: 0.125}", 8, 2),
    "cifar_resnet": ("{depth: 14, width: 0.25}", 8, 2),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_model_trains_under_bsp_on_two_ranks(tmp_path, name):
    options, size, channels = SMALL[name]
    params, summaries = run_rule(tmp_path, 2, [
        f"model={name}", f"model_options={options}", f"data.image_size={size}",
        f"data.channels={channels}", "data.num_train=64", "batch_size=4", "max_steps=3",
        "log.export=false", "checkpoint.every_epochs=0"], timeout=180)
    assert all(s["role"] == "worker" for s in summaries) and summaries[0]["top1"] is not None
    np.testing.assert_array_equal(params[0], params[1])
    assert np.isfinite(params[0]).all()


def test_every_model_is_here():
    from core.registry import MODELS
    assert set(MODELS) == set(SMALL)
