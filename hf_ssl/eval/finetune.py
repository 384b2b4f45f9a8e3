"""End-to-end fine-tuning of an encoder with a linear classification head, trained to convergence.

The classifier follows SplitMask's downstream recipe (El-Nouby et al. 2021, arXiv:2112.10740):
logits = W · LayerNorm(mean of the encoder's patch tokens, or a conv net's pooled map). Optional
layer-wise learning-rate decay for ViT and Swin encoders (BEiT, Bao et al. 2021, arXiv:2106.08254):
block i of L gets ``lr * decay ** (L + 1 - i)``, the patch embedding ``lr * decay ** (L + 1)``, the
head the full ``lr``. Stochastic depth (`with_drop_path`), label smoothing and a cosine to a final
learning rate complete the published fine-tuning recipes, collected as named presets
(`finetune_presets`: each method folder's `Recipe.finetune_presets`, ``hf-ssl evaluate --finetune_preset``). Their mixup, cutmix, RandAugment and
random erasing are not implemented.

Convergence, not a fixed short schedule: a stratified fifth of the labelled images is held out
(never the test split), the model is checked on it `FinetuneSettings.evaluations` times over the
step budget, training stops after `FinetuneSettings.patience` checks without improvement, and the
weights of the best check are the ones tested. Images are augmented in the batch as suits their
size (`augment_batch`). A budget too short to converge makes every encoder look alike, and a
supervised baseline at chance makes any pre-training look like a win.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Literal, TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import BeitConfig, BeitModel, SwinModel, ViTModel

from hf_ssl.backbones.modules import feature_dimension
from hf_ssl.backbones.presets import SMALL_IMAGE_SIZE
from hf_ssl.recipes.base import FinetunePreset

from .features import Pooling, _encoder_of, encode_and_pool
from .low_label import stratified_validation_split
from .metrics import classification_metrics
from .protocol import EvaluationProtocol, register_protocol

if TYPE_CHECKING:
    from .candidates import Candidate
    from .data import LabelledData


class BackboneClassifier(nn.Module):
    """An encoder (ViTModel / SwinModel) + pooling + LayerNorm + linear head.

    Args:
        backbone: module returning ``last_hidden_state`` (B, T, D).
        num_classes: C.
        pooling: ``"mean"`` (patch tokens) or ``"cls"``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, pooling: Pooling = "mean"):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        hidden_size = feature_dimension(backbone)
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) pixels -> (B, num_classes) logits."""
        return self.head(self.norm(encode_and_pool(self.backbone, pixel_values, self.pooling)))  # (B, C)


def num_encoder_blocks(config) -> int | None:
    """L: transformer blocks of a ViT-like encoder (`num_hidden_layers`) or a Swin (sum of `depths`);
    None for other encoders (conv nets, timm modules), which fine-tune without layer-wise decay."""
    if _is_swin(config):
        return int(sum(config.depths))
    layers = getattr(config, "num_hidden_layers", None)
    return int(layers) if isinstance(layers, int) and not hasattr(config, "hidden_sizes") else None


def _is_swin(config) -> bool:
    return getattr(config, "model_type", None) in ("swin", "swinv2")


def block_index(parameter_name: str, config) -> int:
    """Depth of a backbone parameter for layer-wise LR decay: 0 = embeddings, 1..L = blocks, L+1 = rest."""
    num_blocks = num_encoder_blocks(config)
    if parameter_name.startswith("embeddings."):
        return 0
    vit_block = re.match(r"layers\.(\d+)\.", parameter_name)
    if vit_block and not _is_swin(config):
        return int(vit_block.group(1)) + 1
    swin_stage = re.match(r"encoder\.layers\.(\d+)\.(blocks\.(\d+)|downsample)\.", parameter_name)
    if swin_stage and _is_swin(config):
        stage = int(swin_stage.group(1))
        blocks_before = int(sum(config.depths[:stage]))
        if swin_stage.group(3) is not None:
            return blocks_before + int(swin_stage.group(3)) + 1
        return blocks_before + int(config.depths[stage])  # downsampling closes its stage
    return num_blocks + 1


def no_weight_decay_names(config) -> set[str]:
    """Parameter-name components the official fine-tuning recipes do not decay (besides < 2-D ones):
    the CLS token and absolute positions (BEiT / MAE / SimMIM-ViT ``no_weight_decay()``), and for
    Swin also the relative position tables (SimMIM's ``no_weight_decay_keywords()``)."""
    names = {"cls_token", "position_embeddings"}
    if _is_swin(config):
        names.add("relative_position_bias_table")
    return names


def parameter_groups(
    model: BackboneClassifier, learning_rate: float, weight_decay: float, layer_decay: float | None
) -> list[dict]:
    """AdamW groups: weight decay on >= 2-D weights except `no_weight_decay_names`, learning rates
    scaled per depth (`layer_decay` applies to ViT and Swin encoders only, see `num_encoder_blocks`)."""
    config = getattr(model.backbone, "config", None)
    num_blocks = num_encoder_blocks(config) if config is not None else None
    if num_blocks is None:
        layer_decay = None
    exempt_names = no_weight_decay_names(config) if config is not None else {"cls_token", "position_embeddings"}
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if layer_decay is None:
            depth = 0
        else:
            depth = block_index(name[len("backbone.") :], config) if name.startswith("backbone.") else num_blocks + 1
        scale = 1.0 if layer_decay is None else layer_decay ** (num_blocks + 1 - depth)
        decays = parameter.ndim >= 2 and not exempt_names & set(name.split("."))
        group = groups.setdefault(
            (depth, decays),
            {"params": [], "lr": learning_rate * scale, "weight_decay": weight_decay if decays else 0.0},
        )
        group["params"].append(parameter)
    return list(groups.values())


def with_drop_path(encoder: nn.Module, drop_path_rate: float) -> nn.Module:
    """A copy of `encoder` with stochastic depth `drop_path_rate` (linear over depth), same weights.

    `BeitModel` and `SwinModel` are rebuilt with the rate in their config. transformers' `ViTModel`
    has no stochastic depth: it becomes a `BeitModel` with absolute positions and no layer scale,
    which computes the same function (BEiT's attention drops the key bias, a per-query constant
    that softmax ignores). A rate of 0 returns `encoder` itself.

    Raises:
        ValueError: another encoder type.
    """
    if drop_path_rate == 0:
        return encoder
    if not isinstance(encoder, (ViTModel, BeitModel, SwinModel)):
        raise ValueError(f"drop_path_rate > 0 needs a ViT, BEiT or Swin encoder, got {type(encoder).__name__}")
    config = copy.deepcopy(encoder.config)
    state = encoder.state_dict()
    if isinstance(encoder, ViTModel):
        config = BeitConfig(
            **{name: getattr(config, name) for name in (
                "image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
                "layer_norm_eps", "initializer_range")},
            use_absolute_position_embeddings=True, layer_scale_init_value=0.0, use_mean_pooling=False,
        )
        state = {name: tensor for name, tensor in state.items()
                 if not name.endswith("k_proj.bias") and name != "embeddings.mask_token" and not name.startswith("pooler.")}
        encoder_class, kwargs = BeitModel, {}
    elif isinstance(encoder, BeitModel):
        encoder_class, kwargs = BeitModel, {"add_pooling_layer": encoder.pooler is not None}
    else:
        encoder_class = SwinModel
        kwargs = {"add_pooling_layer": encoder.pooler is not None,
                  "use_mask_token": encoder.embeddings.mask_token is not None}
    config.drop_path_rate = drop_path_rate
    rebuilt = encoder_class(config, **kwargs)
    rebuilt.load_state_dict(state, strict=True)
    return rebuilt.to(next(encoder.parameters()).device)


def finetune_presets() -> dict[str, FinetunePreset]:
    """``{name: FinetunePreset}`` of every registered method's published fine-tuning recipes
    (`Recipe.finetune_presets`; ``hf-ssl evaluate --finetune_preset``)."""
    from hf_ssl.recipes import available_methods, get_recipe

    return {preset.name: preset for method in available_methods() for preset in get_recipe(method).finetune_presets}


Augmentation = Literal["auto", "small-image", "crop-flip", "none"]
AUGMENTATIONS = ("auto", "small-image", "crop-flip", "none")


@dataclass(frozen=True)
class FinetuneSettings:
    """Every setting of `finetune` (defaults: hf-ssl's, measured on the bundled scenes; see `finetune_presets`
    for the papers').

    Args:
        epochs: passes over the labelled images; None: the step budget of `training_steps`.
        max_steps: optimizer steps (wins over `epochs`); None: from `epochs` or `training_steps`.
        batch_size, learning_rate (peak), weight_decay: AdamW.
        layer_decay: layer-wise LR decay factor in (0, 1] for ViT / Swin encoders; None disables it.
        drop_path_rate: stochastic depth while fine-tuning (`with_drop_path`).
        warmup_fraction: linear warm-up, as a fraction of the steps.
        min_learning_rate_ratio: the cosine ends at this fraction of the peak.
        label_smoothing: cross-entropy label smoothing.
        augmentation: ``"auto"`` (by image size, see `augment_batch`), ``"small-image"``,
            ``"crop-flip"`` or ``"none"``.
        evaluations: validation checks spread over the step budget.
        patience: checks without a better validation accuracy before stopping (0: never stop early);
            counted from a quarter of the budget (and the end of the warm-up) on.
    """

    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float | None = field(default=0.75, metadata={
        "aliases": ("--layer_decay",), "help": "layer-wise LR decay of ViT / Swin encoders (BEiT / MAE ViT-B: 0.65); 1 disables it"})
    drop_path_rate: float = field(default=0.0, metadata={"aliases": ("--finetune_drop_path",),
                                                         "help": "stochastic depth while fine-tuning (papers: 0.1)"})
    warmup_fraction: float = 0.1
    min_learning_rate_ratio: float = 0.0
    label_smoothing: float = 0.0
    augmentation: Augmentation = field(default="auto", metadata={
        "help": "small-image (zoom + shift), crop-flip (random resized crop + flip), none; auto picks by image size"})
    evaluations: int = field(default=20, metadata={"help": "validation checks over the step budget"})
    patience: int = field(default=5, metadata={"help": "checks without a better validation accuracy before stopping; 0 never stops early"})

    def __post_init__(self):
        for name in ("epochs", "max_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"fine-tuning {name} must be >= 1, got {value}")
        if self.batch_size < 1 or self.evaluations < 1 or self.patience < 0:
            raise ValueError(f"fine-tuning batch_size and evaluations must be >= 1 and patience >= 0, got "
                             f"{self.batch_size}, {self.evaluations}, {self.patience}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1] or None, got {self.layer_decay}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if not 0.0 <= self.min_learning_rate_ratio <= 1.0 or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"min_learning_rate_ratio must be in [0, 1] and label_smoothing in [0, 1), got "
                             f"{self.min_learning_rate_ratio} and {self.label_smoothing}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {self.augmentation!r}")

    def for_random_init(self) -> FinetuneSettings:
        """The same protocol for an untrained encoder (the supervised baseline): no layer-wise decay,
        which protects pre-trained lower layers and would only slow random ones down."""
        return dataclasses.replace(self, layer_decay=None)


def finetune_settings(preset: str | None = None, **overrides) -> FinetuneSettings:
    """The settings of `preset` (or hf-ssl's defaults), with `overrides` on top (None means "not
    given"; ``layer_decay=1`` disables the decay).

    A preset's learning rate follows its linear scaling rule at the final batch size unless
    ``learning_rate`` is overridden.

    Raises:
        ValueError: unknown preset or setting name.
    """
    overrides = {name: value for name, value in overrides.items() if value is not None}
    known = {item.name for item in dataclasses.fields(FinetuneSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown fine-tuning settings {unknown}; known: {sorted(known)}")
    if preset is None:
        return FinetuneSettings(**overrides)
    presets = finetune_presets()
    if preset not in presets:
        raise ValueError(f"finetune preset must be one of {sorted(presets)}, got {preset!r}")
    published = presets[preset]
    values = {name: getattr(published, name) for name in known if hasattr(published, name)}
    values.update(overrides)
    if "learning_rate" not in overrides:
        values["learning_rate"] = published.learning_rate(values["batch_size"])
    return FinetuneSettings(**values)


# The step budget when neither epochs nor steps are given: 50 passes over the labelled images, but
# never fewer than 500 steps (10 % of the scenes is 2 steps per pass) nor more than 5,000.
BUDGET_EPOCHS, MIN_BUDGET_STEPS, MAX_BUDGET_STEPS = 50, 500, 5000


def training_steps(settings: FinetuneSettings, num_images: int) -> int:
    """Optimizer steps of a fine-tuning run on `num_images` labelled training images."""
    if settings.max_steps is not None:
        return settings.max_steps
    steps_per_epoch = math.ceil(num_images / settings.batch_size)
    if settings.epochs is not None:
        return settings.epochs * steps_per_epoch
    return min(MAX_BUDGET_STEPS, max(MIN_BUDGET_STEPS, BUDGET_EPOCHS * steps_per_epoch))


def augment_batch(pixel_values: torch.Tensor, augmentation: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Random geometric views of a batch, drawn per image, in one `grid_sample` call.

    - ``"small-image"`` (``"auto"`` below `SMALL_IMAGE_SIZE`): zoom 0.8-1.25x and a shift of up to
      1/8 of the side; no flip (digits, text and many scans are not mirror-symmetric). The space
      uncovered by a zoom-out takes the colour of the image's border.
    - ``"crop-flip"`` (``"auto"`` from `SMALL_IMAGE_SIZE` up): a random resized crop (8-100 % of the
      area, aspect 3/4-4/3, as the published fine-tuning recipes) and a horizontal flip half the time.
    - ``"none"``: the batch unchanged.

    Args:
        pixel_values: (B, C, H, W) normalised images.

    Returns:
        (B, C, H, W).
    """
    grid = _augmentation_grid(pixel_values, augmentation, generator)
    return pixel_values if grid is None else _sample_pixels(pixel_values, grid)


def _sample_pixels(pixel_values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``(B, C, H, W)`` images on `grid`; uncovered space takes each image's border colour."""
    border = torch.cat([pixel_values[..., 0, :], pixel_values[..., -1, :], pixel_values[..., 0], pixel_values[..., -1]], dim=-1)
    fill = border.mean(dim=-1, keepdim=True).unsqueeze(-1)  # (B, C, 1, 1)
    return F.grid_sample(pixel_values - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def augment_batch_with_masks(pixel_values: torch.Tensor, masks: torch.Tensor, augmentation: Augmentation,
                             generator: torch.Generator, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """`augment_batch` of ``(B, C, H, W)`` images and the same geometric view of their ``(B, H, W)``
    class masks (nearest sampling; pixels a zoom-out uncovers become `ignore_index`)."""
    grid = _augmentation_grid(pixel_values, augmentation, generator)
    if grid is None:
        return pixel_values, masks
    pixels = _sample_pixels(pixel_values, grid)
    shifted = (masks + 1).unsqueeze(1).to(grid.dtype)  # 0 = uncovered after sampling
    sampled = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].round().long()
    return pixels, torch.where(sampled == 0, ignore_index, sampled - 1)


def _augmentation_grid(pixel_values: torch.Tensor, augmentation: Augmentation,
                       generator: torch.Generator) -> torch.Tensor | None:
    """The ``(B, H, W, 2)`` sampling grid of one random view per image (`augment_batch`); None for "none"."""
    if augmentation == "auto":
        augmentation = "small-image" if pixel_values.shape[-1] < SMALL_IMAGE_SIZE else "crop-flip"
    if augmentation == "none":
        return None
    batch = pixel_values.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(batch, generator=generator) * (high - low) + low  # (B,)

    if augmentation == "small-image":
        scale_x = scale_y = uniform(0.8, 1.25)  # sampling-grid scale: > 1 zooms out
        shift_x, shift_y = uniform(-0.25, 0.25), uniform(-0.25, 0.25)  # in [-1, 1] grid units: 1/8 of the side
        flip = torch.ones(batch)
    else:
        area = uniform(0.08, 1.0)
        aspect = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
        scale_x, scale_y = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
        shift_x, shift_y = (1 - scale_x) * uniform(-1.0, 1.0), (1 - scale_y) * uniform(-1.0, 1.0)
        flip = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale_x * flip, scale_y
    theta[:, 0, 2], theta[:, 1, 2] = shift_x, shift_y
    theta = theta.to(device=pixel_values.device, dtype=pixel_values.dtype)
    return F.affine_grid(theta, list(pixel_values.shape), align_corners=False)


@torch.no_grad()
def _predict(model: nn.Module, pixel_values: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """(N, num_classes) float32 CPU logits in eval mode."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(batch.to(device)).float().cpu() for batch in pixel_values.split(batch_size)])
    model.train(was_training)
    return logits


def finetune(
    backbone: nn.Module,
    train_pixel_values: torch.Tensor,
    train_labels: torch.Tensor,
    test_pixel_values: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int | None = None,
    settings: FinetuneSettings | None = None,
    pooling: Pooling = "mean",
    seed: int = 0,
    **overrides,
) -> tuple[dict, BackboneClassifier]:
    """Fine-tune a copy of `backbone` with a linear head until the validation accuracy stops rising,
    and report the test accuracy of the best validation check.

    Args:
        backbone: any encoder `encode_and_pool` handles (ViT, BEiT, Swin, ConvNeXt, ResNet, timm), or an
            hf-ssl pre-training model (its `get_backbone()`); it is copied, the caller's module is left untouched.
        train_pixel_values: (N, C, H, W) preprocessed labelled images; train_labels: (N,).
        test_pixel_values: (M, C, H, W); test_labels: (M,).
        num_classes: C; defaults to ``max(labels) + 1``.
        settings: `FinetuneSettings` (default: hf-ssl's); `overrides` replace single fields of it.
        pooling: ``"mean"`` or ``"cls"``.

    Returns:
        ``(metrics, model)``: ``{"accuracy", "top5_accuracy" (more than 5 classes), "steps" (run),
        "max_steps" (budget), "best_step", "validated", "validation_accuracy"}`` and the classifier
        with the tested weights. Without two labelled images per class nothing is held out: the
        full budget runs and the last weights are tested (``"validated": False``).
    """
    settings = dataclasses.replace(settings or FinetuneSettings(), **overrides)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_labels = torch.as_tensor(train_labels, dtype=torch.long)
    test_labels = torch.as_tensor(test_labels, dtype=torch.long)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    split = stratified_validation_split(train_labels, seed=seed)
    fit_index, validation_index = split if split is not None else (torch.arange(len(train_labels)), None)
    encoder = with_drop_path(copy.deepcopy(_encoder_of(backbone)), settings.drop_path_rate)
    model = BackboneClassifier(encoder, num_classes, pooling)
    device = next(model.backbone.parameters()).device
    model.to(device)

    def batch_loss(batch_index: torch.Tensor) -> torch.Tensor:
        pixels = augment_batch(train_pixel_values[batch_index].to(device), settings.augmentation, generator)
        return F.cross_entropy(model(pixels), train_labels[batch_index].to(device), label_smoothing=settings.label_smoothing)

    def validation_accuracy() -> float:
        predictions = _predict(model, train_pixel_values[validation_index], settings.batch_size * 4, device)
        return float((predictions.argmax(1) == train_labels[validation_index]).float().mean())

    run = train_until_converged(model, settings, fit_index, batch_loss,
                                validation_accuracy if validation_index is not None else None, generator)
    logits = _predict(model, test_pixel_values, settings.batch_size * 4, device)
    metrics = classification_metrics(logits, test_labels)
    return {
        **metrics, "steps": run["steps"], "max_steps": run["max_steps"], "best_step": run["best_step"],
        "validated": split is not None, **({"validation_accuracy": run["best_score"]} if split else {}),
    }, model


def train_until_converged(model: nn.Module, settings: FinetuneSettings, fit_index: torch.Tensor, batch_loss,
                          validation_score, generator: torch.Generator, progress: bool = False,
                          stop_requested: Callable[[], bool] | None = None) -> dict:
    """AdamW (`parameter_groups`) with warm-up and cosine decay over `training_steps`, batches of
    `fit_index` drawn without replacement; `validation_score()` (higher is better) checked
    `settings.evaluations` times, training stopped after `settings.patience` checks without gain
    (not before a quarter of the budget or the end of warm-up), and the best check's weights loaded.

    Args:
        batch_loss: ``(batch indices into fit_index's images) -> loss``.
        validation_score: ``() -> float``, or None to run the whole budget and keep the last weights.
        progress: show a progress bar (steps, loss, best validation score).
        stop_requested: ``() -> bool``, asked after every step; True ends training there (a signal),
            with the best check's weights loaded as at any other end.

    Returns:
        ``{"steps" (run), "max_steps" (budget), "best_step", "best_score" (None without validation),
        "stopped_early" (by `stop_requested`)}``.
    """
    optimizer = torch.optim.AdamW(parameter_groups(model, settings.learning_rate, settings.weight_decay, settings.layer_decay))
    total_steps = training_steps(settings, len(fit_index))
    warmup_steps = int(settings.warmup_fraction * total_steps)
    check_every = max(1, total_steps // settings.evaluations)
    earliest_stop = max(warmup_steps, total_steps // 4)  # a plateau during warm-up is not convergence

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        ratio = settings.min_learning_rate_ratio
        return ratio + (1.0 - ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    best = {"score": -1.0, "step": 0, "state": None}
    checks_without_gain, step, stopped = 0, 0, False
    bar = tqdm(total=total_steps, desc="fine-tuning", unit="step", disable=not progress, dynamic_ncols=True)
    model.train()
    while step < total_steps and not stopped:
        for batch_index in fit_index[torch.randperm(len(fit_index), generator=generator)].split(settings.batch_size):
            loss = batch_loss(batch_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update()
            if validation_score is not None and (step % check_every == 0 or step == total_steps):
                score = validation_score()
                if score > best["score"]:
                    best = {"score": score, "step": step,
                            "state": {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}}
                    checks_without_gain = 0
                elif step >= earliest_stop:
                    checks_without_gain += 1
                bar.set_postfix(loss=f"{loss.item():.3f}", best_validation=f"{best['score']:.3f}", refresh=False)
            stopped = stop_requested is not None and stop_requested()
            if stopped or step == total_steps or (settings.patience and checks_without_gain >= settings.patience):
                break
        if settings.patience and checks_without_gain >= settings.patience:
            break
    bar.close()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    validated = validation_score is not None
    return {"steps": step, "max_steps": total_steps, "best_step": best["step"] if validated else step,
            "best_score": best["score"] if validated else None, "stopped_early": stopped}


class FinetuneProtocol(EvaluationProtocol):
    name = "finetune"
    title = "Fine-tuning"
    description = "the whole encoder and a linear head trained on the labels, early-stopped on a validation split"
    settings_class = FinetuneSettings
    trains_encoder = True

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--finetune_preset", default=None, choices=sorted(finetune_presets()),
                            help="a published fine-tuning recipe; the --finetune_* flags override its values")

    def settings(self, preset: str | None = None, **values) -> FinetuneSettings:
        return finetune_settings(preset, **values)

    def evaluate(self, candidate: Candidate, data: LabelledData, subset: torch.Tensor, settings: FinetuneSettings,
                 seed: int) -> dict:
        """Raw pixels have no encoder to tune: their counterpart is the linear head alone, i.e. the
        validated linear probe on the pixels with the same labels."""
        if candidate.encoder is None:
            from .linear_probe import linear_probe

            train, test = candidate.features(data)
            return linear_probe(train[subset], data.train_labels[subset], test, data.test_labels,
                                num_classes=data.num_classes, seed=seed)
        if candidate.name == "random_init":
            settings = settings.for_random_init()
        metrics, _ = finetune(candidate.encoder, data.train_pixels[subset], data.train_labels[subset], data.test_pixels,
                              data.test_labels, num_classes=data.num_classes, settings=settings,
                              pooling=candidate.pooling, seed=seed)
        return metrics


FINETUNE = register_protocol(FinetuneProtocol())
