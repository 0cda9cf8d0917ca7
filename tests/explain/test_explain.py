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
