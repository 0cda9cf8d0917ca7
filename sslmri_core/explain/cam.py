"""Class activation maps (pytorch-grad-cam) of a fine-tuned classifier: batched maps with raw
statistics and on-demand maps for one image (drawing them: the torch-free :mod:`sslmri_core.explain.overlay`).

The dashboard imports this module only when it computes a map: :func:`load_model_for_run` once per run
(cached with ``st.cache_resource``), then :func:`explain_image` per scan; it redraws with
:func:`sslmri_core.explain.overlay.render_overlay` per slider move.

pytorch-grad-cam normalises every map to [0, 1] on its own, which makes maps incomparable across
scans; the raw map (after ReLU, at the target layer's resolution) is captured before that scaling
so its max and mean can be stored too.

Vision transformers (timm ``VisionTransformer`` encoders) are explained on their token maps: the
target layer's ``(B, prefix + h*w, C)`` output loses its class/register tokens and is folded to
``(B, C, h, w)`` before the CAM arithmetic (:func:`tokens_to_map`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sslmri_core.config import CAM_METHODS


def _library_class(method: str) -> type:
    from pytorch_grad_cam import (
        EigenCAM,
        GradCAM,
        GradCAMPlusPlus,
        HiResCAM,
        LayerCAM,
        ScoreCAM,
    )

    classes = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "eigencam": EigenCAM,
               "layercam": LayerCAM, "scorecam": ScoreCAM}
    if method not in classes:
        raise ValueError(f"--method must be one of {', '.join(CAM_METHODS)}, got {method!r}")
    return classes[method]


def check_method(method: str) -> None:
    """Raise a one-line ValueError naming ``--method`` for an unknown method (before any work)."""
    if method not in CAM_METHODS:
        raise ValueError(f"--method must be one of {', '.join(CAM_METHODS)}, got {method!r}")


@functools.cache
def _raw_capturing(method: str) -> type:
    """The library's CAM class for ``method``, also keeping each raw map before it is rescaled."""
    base = _library_class(method)

    class RawCapturing(base):  # type: ignore[misc, valid-type]
        raw_cams: list[np.ndarray]

        def get_cam_image(self, *args: Any, **kwargs: Any) -> np.ndarray:
            cam = super().get_cam_image(*args, **kwargs)
            self.raw_cams.append(np.maximum(cam, 0).astype(np.float32))  # (B, h, w), what gets scaled next
            return cam

    RawCapturing.__name__ = f"RawCapturing{base.__name__}"
    return RawCapturing


# -- target layers ------------------------------------------------------------------------------
MIN_CAM_SIDE = 8  # the default layer's map has at least this many cells a side at the model's input size


def is_token_model(encoder: nn.Module) -> bool:
    """A timm ViT-style encoder: a stack of ``blocks`` whose outputs are token sequences ``(B, T, C)``."""
    return isinstance(getattr(encoder, "num_prefix_tokens", None), int) and isinstance(
        getattr(encoder, "blocks", None), nn.Sequential | nn.ModuleList)


def default_target_layer(model: nn.Module, image_size: int | None = None) -> str:
    """Name of the deepest encoder stage inside a :class:`~sslmri_core.train.models.Classifier` whose map is at
    least MIN_CAM_SIDE cells a side at ``image_size`` (ResNets: ``layer2`` at 64-96 px, ``layer3`` at
    128-255, ``layer4`` from 256); the last stage when the size is unknown. A ViT: the last block's
    ``norm1`` (pytorch-grad-cam's documented choice; every block has the same token grid, and the last
    block's output is no longer spatial for the class token read-out).

    The last stage of a ResNet is 2x2 at 64 px and 4x4 at 128 px: upsampled, such a map is a few flat
    plateaus, and its peak (the first pixel of a plateau) lands in a corner."""
    encoder = getattr(model, "encoder", model)
    prefix = "encoder." if encoder is not model else ""
    if is_token_model(encoder):
        blocks = encoder.get_submodule("blocks")
        last = len(blocks) - 1  # type: ignore[arg-type]
        return prefix + (f"blocks.{last}.norm1" if hasattr(blocks[last], "norm1") else f"blocks.{last}")  # type: ignore[index]
    info = getattr(encoder, "feature_info", None)
    if info:
        stages = [(s["module"], s.get("reduction", 1)) for s in info] if isinstance(info, list) else \
            [(info.module_name(i), info.reduction(i)) for i in range(len(info))]
        fine = [name for name, reduction in stages if image_size is None or image_size // reduction >= MIN_CAM_SIDE]
        return prefix + (fine[-1] if fine else stages[0][0])
    convs = [n for n, m in encoder.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("--target-layer: the model has no convolution layer to explain; name one")
    return prefix + convs[-1]


def resolve_target_layer(model: nn.Module, name: str | None, image_size: int | None = None) -> str:
    """The full module name for ``name`` (``layer4`` or ``encoder.layer4``), or the default."""
    if name is None:
        return default_target_layer(model, image_size)
    modules = dict(model.named_modules())
    for candidate in (name, f"encoder.{name}"):
        if candidate and candidate in modules:
            return candidate
    stages = [n for n in modules if n.count(".") == 1 and n.startswith("encoder.")]
    raise ValueError(f"--target-layer: no module named {name!r} in the model (e.g. {', '.join(stages[-4:])})")


# -- tensors ------------------------------------------------------------------------------------
def to_input(images_u8: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 ``(B, S, S)`` -> normalised float ``(B, 1, S, S)``, channels-last, as fine-tuning feeds the model."""
    from sslmri_core.train.augment import normalize, to_float

    t = (torch.from_numpy(np.require(images_u8, np.uint8, ["C", "W"])) if isinstance(images_u8, np.ndarray)
         else images_u8)
    return normalize(to_float(t)).to(device).contiguous(memory_format=torch.channels_last)


def _grad_starts_here(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
    # The model's weights are frozen, so the target layer's output becomes the graph's leaf:
    # backward runs through the head only, never through the early layers or into weight grads.
    return output.detach().requires_grad_(True)


def tokens_to_map(t: torch.Tensor, prefix_tokens: int = 0) -> torch.Tensor:
    """The library's ``reshape_transform``: activations or gradients as fp32 ``(B, C, h, w)`` (numpy has no bf16).

    A token sequence ``(B, prefix_tokens + h*w, C)`` (a ViT block) drops its class/register tokens and is
    folded into its square patch grid; a conv map ``(B, C, h, w)`` passes unchanged."""
    if t.ndim == 3:
        tokens = t[:, prefix_tokens:]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(f"--target-layer: {tokens.shape[1]} patch tokens do not form a square grid")
        t = tokens.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)
    return t.float()


class _FloatLogits(nn.Module):
    """The classifier with fp32 logits even under bf16 autocast (the library reads them with numpy)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float()


@dataclass
class CamBatch:
    """Maps of one batch: ``cams`` float32 ``(B, S, S)`` in [0, 1]; ``raw_max``/``raw_mean`` ``(B,)``
    of the unnormalised map; ``probs`` ``(B, K)`` softmax; ``targets`` ``(B,)`` explained class indices."""

    cams: np.ndarray
    raw_max: np.ndarray
    raw_mean: np.ndarray
    probs: np.ndarray
    targets: np.ndarray


def compute_cams(
    model: nn.Module,
    layer: str,
    x: torch.Tensor,
    *,
    method: str = "gradcam",
    target: int | np.ndarray | None = None,
    precision: str = "fp32",
) -> CamBatch:
    """CAMs for a batch ``x`` ``(B, 1, S, S)``: for class ``target`` (one for all, or ``(B,)`` one per image),
    or each image's predicted class.

    One forward pass gives both the prediction and the map. The library's hooks live only inside
    this call (context manager), and so does the hook that starts the gradient at ``layer``. A ViT
    ``layer``'s token output is folded into its patch grid (:func:`tokens_to_map`).
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from sslmri_core.train.runtime import autocast

    for p in model.parameters():
        if p.requires_grad:
            p.requires_grad_(False)
    module = model.get_submodule(layer)
    per_image = None if target is None else np.broadcast_to(np.asarray(target, dtype=np.int64), (x.shape[0],))
    targets = None if per_image is None else [ClassifierOutputTarget(int(t)) for t in per_image]
    wrapped = _FloatLogits(model)
    encoder = getattr(model, "encoder", model)
    prefix_tokens = int(getattr(encoder, "num_prefix_tokens", 0)) if is_token_model(encoder) else 0
    transform = functools.partial(tokens_to_map, prefix_tokens=prefix_tokens)
    with _raw_capturing(method)(model=wrapped, target_layers=[module], reshape_transform=transform) as cam:
        cam.raw_cams = []
        handle = module.register_forward_hook(_grad_starts_here, prepend=True)
        try:
            with torch.enable_grad(), autocast(x.device, precision):
                maps = cam(input_tensor=x, targets=targets)
            logits = cam.outputs.detach().float()
        finally:
            handle.remove()
            raw = cam.raw_cams[-1] if cam.raw_cams else np.zeros((x.shape[0], 1, 1), np.float32)
            cam.raw_cams = []
            cam.outputs = None
    probs = torch.softmax(logits, dim=1).cpu().numpy()
    chosen = probs.argmax(axis=1) if per_image is None else per_image
    return CamBatch(
        cams=np.clip(np.asarray(maps, dtype=np.float32), 0.0, 1.0),
        raw_max=raw.reshape(len(raw), -1).max(axis=1),
        raw_mean=raw.reshape(len(raw), -1).mean(axis=1),
        probs=probs,
        targets=chosen.astype(np.int64),
    )


# -- models of runs -----------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A fine-tuned classifier ready to explain (eval mode, frozen weights)."""

    model: nn.Module
    classes: list[str]
    image_size: int
    target_layer: str
    run_id: int | None
    precision: str = "fp32"
    device: str = "cpu"
    preprocess: str = "none"  # how its images were prepared (``--preprocess``): scans are shown and read so
    tta: bool = False  # the run scored the mean of each image and its mirror (``--tta``): predictions do so too


def scored_probabilities(loaded: LoadedModel, images: np.ndarray) -> np.ndarray | None:
    """Class probabilities ``(B, K)`` of uint8 ``images`` ``(B, S, S)`` as the run scored its test split (the
    mean over the image and its mirror), or None when the run used no test-time flips (the CAM pass's own
    probabilities are then the run's)."""
    if not loaded.tta:
        return None
    from sslmri_core.train.predict import predict

    return predict(loaded.model, torch.from_numpy(images.copy()), np.arange(len(images)),  # type: ignore[arg-type]
                   torch.device(loaded.device), loaded.precision, tta=True)


def cams_as_scored(loaded: LoadedModel, images: np.ndarray, x: torch.Tensor, method: str,
                   target: int | None) -> tuple[CamBatch, np.ndarray]:
    """CAMs of uint8 ``images`` ``(B, S, S)`` (``x``: them as model input) and their class probabilities
    ``(B, K)`` as the run scored them: without a ``target`` each image's map explains the class the run
    predicts (with ``--tta``, that of the image and its mirror)."""
    scored = scored_probabilities(loaded, images)
    chosen: int | np.ndarray | None = target if target is not None or scored is None else scored.argmax(1)
    cb = compute_cams(loaded.model, loaded.target_layer, x, method=method, target=chosen, precision=loaded.precision)
    return cb, cb.probs if scored is None else scored


def model_from_checkpoint(ckpt: dict[str, Any], run_id: int | None = None, *, precision: str = "fp32",
                          target_layer: str | None = None) -> LoadedModel:
    """Rebuild the classifier a fine-tuning checkpoint holds (config, classes and weights inside it),
    on this machine's device, in eval mode with frozen weights."""
    from sslmri_core.train.checkpoints import classifier_from
    from sslmri_core.train.runtime import pick_device, resolve_precision

    found = classifier_from(ckpt, f"run {run_id}")
    device = pick_device()
    model = found.model.to(device).eval().to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    size = int(found.cfg.image_size)
    return LoadedModel(model, found.classes, size, resolve_target_layer(model, target_layer, size), run_id,
                       resolve_precision(precision, device), str(device), found.cfg.preprocess, found.cfg.tta)


def load_model_for_run(db_url: str | None, run_id: int, *, precision: str | None = None,
                       target_layer: str | None = None, file_rule: Callable[..., Any] | None = None) -> LoadedModel:
    """The classifier of fine-tuning run ``run_id``, for the dashboard (and ``cli.py report``).

    The run is read through the read-only query layer (a SQLite file opened ``mode=ro``: never
    written, never switched to WAL) and its checkpoint opened only by ``file_rule(path, out_dir, what)``:
    by default the dashboard's (:func:`sslmri_core.paths.viewable_run_file`: inside ``$SSLMRI_RUNS_ROOTS``
    and the run's own folder); commands pass :func:`sslmri_core.paths.run_file` (the run's own folder).
    """
    from sslmri_core.config import GradcamConfig
    from sslmri_core.errors import UsageError
    from sslmri_core.paths import viewable_run_file
    from sslmri_core.store.queries import run_detail
    from sslmri_core.train.checkpoints import load_checkpoint

    detail = run_detail(db_url, run_id)
    if detail is None:
        raise UsageError(f"run {run_id}: no such run in the store")
    record = detail.run
    if record.kind != "finetune":
        raise UsageError(f"run {run_id} is a {record.kind} run; Grad-CAM explains fine-tuning runs")
    if not record.checkpoint_path:
        raise UsageError(f"run {run_id} has no checkpoint (run status: {record.status})")
    path = (file_rule or viewable_run_file)(record.checkpoint_path, record.out_dir, "checkpoint")
    return model_from_checkpoint(load_checkpoint(path), run_id, precision=precision or GradcamConfig().precision,
                                 target_layer=target_layer)


# -- one image ----------------------------------------------------------------------------------
@dataclass
class ImageExplanation:
    """What the dashboard shows for one scan; ``image_u8`` and ``cam`` are ``(S, S)``."""

    image_u8: np.ndarray
    cam: np.ndarray
    probs: dict[str, float]
    pred_label: str
    confidence: float
    raw_max: float
    raw_mean: float
    method: str
    target_label: str


def prepare_image(image: np.ndarray, size: int) -> np.ndarray:
    """Any 2-D array (uint8, other integers or floats; or H x W x 3/4 colour) -> uint8 ``(size, size)``,
    padded to a square and resized exactly as training images are."""
    from PIL import Image

    from sslmri_core.data.decode import square_resize

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # PIL's L conversion weights
        arr = arr.astype(np.uint8) if np.asarray(image).dtype == np.uint8 else arr
    if arr.ndim != 2 or min(arr.shape) < 2:
        raise ValueError(f"image: expected a 2-D grey image, got an array of shape {np.asarray(image).shape}")
    if arr.dtype != np.uint8:
        f = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(f.min()), float(f.max())
        arr = ((f - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(f)).astype(np.uint8)
    return square_resize(Image.fromarray(np.ascontiguousarray(arr), mode="L"), size)


def explain_image(loaded: LoadedModel, image: np.ndarray, *, method: str = "gradcam",
                  target: str | None = None) -> ImageExplanation:
    """CAM of one image for class ``target`` (a class name; default: the predicted class)."""
    check_method(method)
    if target is not None and target not in loaded.classes:
        raise ValueError(f"target: unknown class {target!r} (classes: {', '.join(loaded.classes)})")
    u8 = prepare_image(image, loaded.image_size)
    x = to_input(u8[None], loaded.device)
    idx = None if target is None else loaded.classes.index(target)
    out, scored = cams_as_scored(loaded, u8[None], x, method, idx)
    probs = scored[0]
    pred = int(probs.argmax())
    return ImageExplanation(
        image_u8=u8, cam=out.cams[0], probs={c: float(p) for c, p in zip(loaded.classes, probs, strict=False)},
        pred_label=loaded.classes[pred], confidence=float(probs[pred]), raw_max=float(out.raw_max[0]),
        raw_mean=float(out.raw_mean[0]), method=method, target_label=loaded.classes[int(out.targets[0])],
    )


def count_hooks(model: nn.Module) -> int:
    """Forward and backward hooks registered on any module of ``model`` (leaks show up here)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
