"""JAX FID Inception vs a PyTorch reference of pytorch-fid's network (random weights).

The reference (``tests/torch_fid_inception.py``) restates pytorch-fid's ``InceptionV3``
(FID blocks, resize protocol) in plain torch; its random state dict, saved as a ``.pth``
like ``pt_inception-2015-12-05-*.pth``, goes through our converter and loader.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.dirname(__file__))
from torch_fid_inception import FIDInceptionV3  # noqa: E402

from mars_jax.eval import convert_weights, inception  # noqa: E402


@pytest.fixture(scope="module")
def torch_model():
    torch.manual_seed(0)
    model = FIDInceptionV3()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # a cumulative average: see calibrate()
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def calibrate(model, x):
    """Random-weight BatchNorm statistics that keep activations O(1) on ``x``: one
    train-mode pass sets every layer's running stats to that batch's."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
    with torch.no_grad():
        model.train()(x)
    model.eval()


@pytest.mark.slow  # the full-size network in float64 twice (~30 s on two shared cores)
def test_pool3_matches_torch_reference_with_resize(torch_model, tmp_path):
    rng = np.random.default_rng(0)
    # 320 rows (downsampled to 299) × 200 columns (upsampled): both resize directions.
    images = rng.integers(0, 256, (2, 320, 200, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255.0
    calibrate(torch_model, x.float())
    pth = tmp_path / "pt_inception-test.pth"
    torch.save(torch_model.state_dict(), pth)
    npz = tmp_path / "inception.npz"
    convert_weights.main(["inception", str(pth), str(npz)])
    params = inception.load_params(str(npz))

    # Float64 on both sides: a 94-layer random network amplifies float32 rounding to
    # ~1e-4 (torch float32 itself is that far from float64), so 1e-4 would test nothing.
    # The resize in float32 (the pytorch-fid path: float32 images; the kernel's sampling
    # coordinates depend on the dtype), the network in float64: interpolating 299 → 299
    # inside the model's forward is the identity.
    with torch.no_grad():
        resized = torch.nn.functional.interpolate(
            x.float(), size=(299, 299), mode="bilinear", align_corners=False
        )
        want = torch_model.double()(resized.double()).numpy()
    torch_model.float()
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x_jax = 2.0 * jnp.asarray(resized.permute(0, 2, 3, 1).double().numpy()) - 1.0
        got = np.asarray(inception.pool3_from_normalized(p64, x_jax))
    assert got.shape == (2, 2048)
    assert want.std() > 0.05  # not a degenerate all-zero comparison
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # The float32 production path (uint8 in, our resize) agrees to float32 accuracy.
    got32 = np.asarray(inception.pool3_features(params, images))
    np.testing.assert_allclose(got32, want, atol=2e-3 * want.std() + 1e-3, rtol=0)
    # The .pth itself loads the same (torch is installed here).
    direct = inception.load_params(str(pth))
    np.testing.assert_array_equal(
        direct["Mixed_7c.branch_pool"]["w_HxWxIxO"], params["Mixed_7c.branch_pool"]["w_HxWxIxO"]
    )


@pytest.mark.parametrize("hw", [(37, 450), (480, 640), (299, 299), (64, 64)])
def test_resize_matches_torch_interpolate(hw):
    image = np.random.default_rng(1).integers(0, 256, (*hw, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    want = (
        torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)[0]
        .permute(1, 2, 0)
        .numpy()
    )
    # Up to float32 rounding of the sampling coordinates (torch's kernel may fuse a
    # multiply-add): ~1e-5 at 640 px.
    np.testing.assert_allclose(inception.resize_host(image), want, atol=5e-5, rtol=0)
    got = np.asarray(inception.preprocess(jnp.asarray(image[None])))[0]
    np.testing.assert_allclose(got, 2 * want - 1, atol=1e-4, rtol=0)


def test_loader_names_missing_and_mismatched_tensors(torch_model):
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    missing = dict(state)
    del missing["Mixed_6c.branch7x7_2.bn.running_var"]
    with pytest.raises(KeyError, match=r"Mixed_6c\.branch7x7_2\.bn\.running_var"):
        inception.params_from_state_dict(missing)
    bad = {**state, "Mixed_5b.branch_pool.conv.weight": np.zeros((32, 192, 3, 3), np.float32)}
    with pytest.raises(ValueError, match=r"Mixed_5b\.branch_pool\.conv\.weight.*\(32, 192, 1, 1\)"):
        inception.params_from_state_dict(bad)
    with pytest.raises(KeyError, match="unexpected tensor 'extra.weight'"):
        inception.params_from_state_dict({**state, "extra.weight": np.zeros(3)})


def test_random_init_has_the_real_shapes():
    params = inception.init_params(seed=0)
    for name, cin, cout, (kh, kw), _, _ in inception.CONVS:
        assert params[name]["w_HxWxIxO"].shape == (kh, kw, cin, cout), name
    assert sum(p["w_HxWxIxO"].size for p in params.values()) > 21_000_000
