"""On-demand CAMs (what the dashboard calls) on a tiny random-weight classifier (overlays: test_overlay.py)."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
import torch

from sslmri_core.config import CAM_METHODS
from sslmri_core.explain.cam import (
    LoadedModel,
    count_hooks,
    explain_image,
    resolve_target_layer,
)
from sslmri_core.train.models import Classifier, create_encoder

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    torch.manual_seed(0)
    model = Classifier(create_encoder("test_resnet"), len(CLASSES)).eval()
    return LoadedModel(model, CLASSES, 64, resolve_target_layer(model, None), None)


def _scan(seed: int = 0, shape: tuple[int, int] = (70, 50)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    head = ((yy - shape[0] / 2) / (shape[0] / 2.4)) ** 2 + ((xx - shape[1] / 2) / (shape[1] / 2.4)) ** 2 <= 1
    return (head * 0.6 + rng.random(shape) * 0.2).astype(np.float32)  # float, not square


def _tensor_count() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on some deprecated torch objects warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def _reference_gradcam(loaded: LoadedModel, image_u8: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM by hand (Selvaraju et al. 2017) for one prepared image: the softmax ``(K,)`` and the raw map
    ``relu(sum_k mean(dy/dA_k) A_k)`` at the target layer's resolution."""
    from sslmri_core.explain.cam import to_input

    acts: list[torch.Tensor] = []
    handle = loaded.model.get_submodule(loaded.target_layer).register_forward_hook(lambda m, i, o: acts.append(o))
    try:
        with torch.enable_grad():
            logits = loaded.model(to_input(image_u8[None]).requires_grad_(True))
            (grads,) = torch.autograd.grad(logits[0, CLASSES.index(target)], acts[0])
    finally:
        handle.remove()
    raw = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * acts[0]).sum(dim=1))[0]
    return torch.softmax(logits.detach(), dim=1)[0].numpy(), raw.detach().numpy()


def test_default_target_is_the_last_stage_and_names_resolve(loaded: LoadedModel) -> None:
    assert loaded.target_layer == "encoder.layer4"
    assert resolve_target_layer(loaded.model, "layer3") == "encoder.layer3"
    with pytest.raises(ValueError, match="--target-layer"):
        resolve_target_layer(loaded.model, "layer9")


def test_one_image_of_any_size_gives_a_map_at_the_model_size(loaded: LoadedModel) -> None:
    out = explain_image(loaded, _scan())
    assert out.image_u8.shape == out.cam.shape == (64, 64) and out.image_u8.dtype == np.uint8
    assert out.cam.dtype == np.float32 and out.cam.min() == 0.0 and out.cam.max() == pytest.approx(1.0, abs=1e-5)
    assert list(out.probs) == CLASSES
    probs, raw = _reference_gradcam(loaded, out.image_u8, out.pred_label)
    np.testing.assert_allclose([out.probs[c] for c in CLASSES], probs, rtol=1e-5)  # the model's own softmax
    assert out.pred_label == CLASSES[int(probs.argmax())] and out.confidence == out.probs[out.pred_label]
    # The raw statistics are those of the unnormalised Grad-CAM map of the predicted class.
    assert out.target_label == out.pred_label and raw.ndim == 2
    assert out.raw_max == pytest.approx(float(raw.max()), rel=1e-4)
    assert out.raw_mean == pytest.approx(float(raw.mean()), rel=1e-4)
    other = next(c for c in CLASSES if c != out.pred_label)
    chosen = explain_image(loaded, _scan(), target=other)
    assert chosen.target_label == other and chosen.pred_label == out.pred_label
    _, raw_other = _reference_gradcam(loaded, out.image_u8, other)
    assert chosen.raw_max == pytest.approx(float(raw_other.max()), rel=1e-4, abs=1e-7)
    assert chosen.raw_mean == pytest.approx(float(raw_other.mean()), rel=1e-4, abs=1e-7)
    assert raw_other.max() != pytest.approx(raw.max(), rel=1e-2)  # the target class matters
    with pytest.raises(ValueError, match="target"):
        explain_image(loaded, _scan(), target="no-such-class")
    with pytest.raises(ValueError, match="--method"):
        explain_image(loaded, _scan(), method="gradcam-9000")


@pytest.mark.parametrize("method", CAM_METHODS)
def test_every_method_gives_a_normalised_map(loaded: LoadedModel, method: str) -> None:
    out = explain_image(loaded, _scan(1), method=method)
    assert out.method == method and out.cam.shape == (64, 64)
    # Normalised per image: it spans [0, 1] (neither clipped nor left at the raw scale).
    assert out.cam.min() == 0.0 and out.cam.max() == pytest.approx(1.0, abs=1e-5)
    assert np.isfinite(out.raw_max) and out.raw_max > out.raw_mean > 0.0


def test_hooks_are_released_and_repeated_calls_do_not_keep_tensors(loaded: LoadedModel) -> None:
    hooks = count_hooks(loaded.model)
    explain_image(loaded, _scan())  # warm-up: lazily created state is not a leak
    before = _tensor_count()
    for i in range(15):
        explain_image(loaded, _scan(i), method=("gradcam", "gradcam++", "eigencam")[i % 3])
    assert count_hooks(loaded.model) == hooks
    assert _tensor_count() - before <= 2  # nothing accumulates per call (activations, gradients, graphs)
    assert all(p.grad is None for p in loaded.model.parameters())


def test_raw_statistics_keep_the_scale_that_normalisation_removes(loaded: LoadedModel) -> None:
    """Doubling the classifier's weights doubles the gradients, hence the raw Grad-CAM map, while
    the per-image normalised map stays the same: only the raw values can be compared."""
    image = _scan(3)
    base = explain_image(loaded, image)
    model = Classifier(create_encoder("test_resnet"), len(CLASSES)).eval()
    model.load_state_dict(loaded.model.state_dict())
    with torch.no_grad():
        model.fc.weight.mul_(2.0)
        model.fc.bias.mul_(2.0)
    doubled = explain_image(LoadedModel(model, CLASSES, 64, loaded.target_layer, None), image, target=base.pred_label)
    assert doubled.raw_max == pytest.approx(2 * base.raw_max, rel=1e-3)
    assert doubled.raw_mean == pytest.approx(2 * base.raw_mean, rel=1e-3)
    np.testing.assert_allclose(doubled.cam, base.cam, atol=1e-4)


# -- ViT encoders ----------------------------------------------------------------------------------
def _tiny_vit() -> Classifier:
    import timm

    torch.manual_seed(0)
    encoder = timm.create_model("vit_tiny_patch16_224", pretrained=False, in_chans=1, num_classes=0, img_size=64,
                                patch_size=8, depth=2, embed_dim=48, num_heads=2, reg_tokens=2)
    return Classifier(encoder, len(CLASSES)).eval()


def test_token_maps_drop_prefix_tokens_and_fold_into_the_patch_grid() -> None:
    from sslmri_core.explain.cam import tokens_to_map

    grid = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 4, 4, 3)  # (B, h, w, C)
    tokens = torch.cat([torch.full((2, 3, 3), -1.0), grid.reshape(2, 16, 3)], dim=1)  # 3 prefix tokens first
    out = tokens_to_map(tokens, prefix_tokens=3)
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.float32
    assert torch.equal(out, grid.permute(0, 3, 1, 2))  # token (r, c) lands at map cell (r, c)
    conv = torch.randn(2, 5, 4, 4, dtype=torch.bfloat16)
    assert torch.equal(tokens_to_map(conv), conv.float())  # conv maps pass through (as fp32)
    with pytest.raises(ValueError, match="square"):
        tokens_to_map(torch.zeros(1, 1 + 15, 3), prefix_tokens=1)


def test_a_vit_is_explained_at_its_last_blocks_norm1_with_hooks_released() -> None:
    model = _tiny_vit()
    assert resolve_target_layer(model, None, 64) == "encoder.blocks.1.norm1"  # not a stage of feature_info
    assert resolve_target_layer(model, None) == "encoder.blocks.1.norm1"
    loaded = LoadedModel(model, CLASSES, 64, resolve_target_layer(model, None, 64), None)
    hooks = count_hooks(model)
    for method in ("gradcam", "gradcam++", "eigencam"):
        out = explain_image(loaded, _scan(2), method=method)
        assert out.cam.shape == (64, 64) and out.cam.max() == pytest.approx(1.0, abs=1e-5)
        assert np.isfinite(out.raw_max) and out.raw_max > out.raw_mean >= 0.0
        # Patch-grid structure: constant within each 8 x 8 patch only up to the upsampling, not one flat value.
        assert out.cam.std() > 0.01
    assert count_hooks(model) == hooks
    assert all(p.grad is None for p in model.parameters())


def test_a_vit_checkpoint_is_rebuilt_with_its_default_layer() -> None:
    """ViTs train at their native input size (timm's fixed position embeddings): test_vit at 160 px."""
    from sslmri_core.explain.cam import model_from_checkpoint

    torch.manual_seed(0)
    model = Classifier(create_encoder("test_vit"), 2)
    ckpt = {"model": model.state_dict(), "classes": ["x", "y"], "config": {"model": "test_vit", "image_size": 160}}
    loaded = model_from_checkpoint(ckpt)
    assert loaded.target_layer == "encoder.blocks.5.norm1" and loaded.image_size == 160
    hooks = count_hooks(loaded.model)
    out = explain_image(loaded, _scan(4, (160, 160)))
    assert out.cam.shape == (160, 160) and count_hooks(loaded.model) == hooks


# -- deletion test ---------------------------------------------------------------------------------
class _RegionModel(torch.nn.Module):
    """Class 0's logit is the texture energy inside one fixed region: blurring that region (and only
    that) costs it confidence."""

    def __init__(self, region: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("region", torch.from_numpy(region.astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = (x[:, 0] ** 2 * self.region).sum(dim=(1, 2)) / self.region.sum()
        return torch.stack([4.0 * energy, torch.full_like(energy, 2.0)], dim=1)


def test_deletion_is_scored_against_random_and_baseline_regions_of_the_same_size() -> None:
    from sslmri_core.explain.faithfulness import class_confidence, deletion_drops

    size, pct = 64, 5.0
    yy, xx = np.mgrid[:size, :size]
    head = ((yy - 32) / 28.0) ** 2 + ((xx - 32) / 24.0) ** 2 <= 1
    region = (yy - 14) ** 2 + (xx - 32) ** 2 <= 8**2  # inside the head, off its centre; about 5% of the image
    model = _RegionModel(region).eval()
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 1.5, (4, 1, size, size)).astype(np.float32))
    x = x * torch.from_numpy(head)  # texture only inside the head
    targets = np.zeros(4, dtype=np.int64)
    conf = class_confidence(model, x, targets)
    cams = np.repeat(np.exp(-((yy - 14) ** 2 + (xx - 32) ** 2) / 50.0)[None].astype(np.float32), 4, axis=0)
    heads = np.repeat(head[None], 4, axis=0)
    drops = deletion_drops(model, x, cams, targets, conf, topk_pct=pct, rng=np.random.default_rng(0), heads=heads)
    assert all(d.shape == (4,) for d in drops)
    assert (drops.deletion > 0.2).all()  # the map's top is the region the model reads
    assert (drops.deletion > drops.random).all() and (drops.deletion > drops.baseline).all()
    assert np.abs(drops.baseline).max() < 1e-3  # the head's core misses the region: nothing removed that matters
