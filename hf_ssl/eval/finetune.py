"""End-to-end fine-tuning of a pre-trained encoder with a linear classification head.

The classifier follows SplitMask's downstream recipe (El-Nouby et al. 2021, arXiv:2112.10740):
logits = W · LayerNorm(mean of the encoder's patch tokens). Optional layer-wise learning-rate
decay (BEiT, Bao et al. 2021, arXiv:2106.08254): block i of L gets ``lr * decay ** (L + 1 - i)``,
the patch embedding ``lr * decay ** (L + 1)``, the head the full ``lr``. Stochastic depth
(`with_drop_path`), label smoothing and a cosine to a final learning rate complete the published
fine-tuning recipes, collected as named presets (`FINETUNE_PRESETS`, ``hf-ssl evaluate
--finetune_preset``). Their mixup, cutmix, RandAugment and random erasing are not implemented.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BeitConfig, BeitModel, SwinModel, ViTModel

from hf_ssl.backbones.modules import feature_dimension

from .features import Pooling, _encoder_of, encode_and_pool
from .metrics import classification_metrics


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


def num_encoder_blocks(config) -> int:
    """L: transformer blocks of a ViT (`num_hidden_layers`) or a Swin (sum of `depths`)."""
    return int(sum(config.depths)) if hasattr(config, "depths") else int(config.num_hidden_layers)


def block_index(parameter_name: str, config) -> int:
    """Depth of a backbone parameter for layer-wise LR decay: 0 = embeddings, 1..L = blocks, L+1 = rest."""
    num_blocks = num_encoder_blocks(config)
    if parameter_name.startswith("embeddings."):
        return 0
    vit_block = re.match(r"layers\.(\d+)\.", parameter_name)
    if vit_block and not hasattr(config, "depths"):
        return int(vit_block.group(1)) + 1
    swin_stage = re.match(r"encoder\.layers\.(\d+)\.(blocks\.(\d+)|downsample)\.", parameter_name)
    if swin_stage and hasattr(config, "depths"):
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
    if hasattr(config, "depths"):
        names.add("relative_position_bias_table")
    return names


def parameter_groups(
    model: BackboneClassifier, learning_rate: float, weight_decay: float, layer_decay: float | None
) -> list[dict]:
    """AdamW groups: weight decay on >= 2-D weights except `no_weight_decay_names`, learning rates scaled per depth."""
    config = model.backbone.config
    num_blocks = num_encoder_blocks(config)
    exempt_names = no_weight_decay_names(config)
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
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


@dataclass(frozen=True)
class FinetunePreset:
    """A published fine-tuning recipe (``hf-ssl evaluate --finetune_preset <name>``).

    Args:
        name, description, source: what it is and where the values come from.
        epochs: published epochs.
        batch_size: published total batch size.
        base_learning_rate, reference_batch_size: learning rate = base * batch / reference.
        layer_decay, drop_path_rate, weight_decay: as published.
        warmup_fraction: warm-up epochs / epochs.
        min_learning_rate_ratio: final learning rate of the cosine / peak (``min_lr`` / ``lr``).
        label_smoothing: cross-entropy label smoothing.
    """

    name: str
    description: str
    source: str
    epochs: int
    batch_size: int
    base_learning_rate: float
    reference_batch_size: int
    layer_decay: float
    drop_path_rate: float
    weight_decay: float
    warmup_fraction: float
    min_learning_rate_ratio: float
    label_smoothing: float

    def learning_rate(self, batch_size: int) -> float:
        """The linear scaling rule at `batch_size`."""
        return self.base_learning_rate * batch_size / self.reference_batch_size


_SIMMIM_FINETUNE = dict(
    epochs=100, batch_size=2048, base_learning_rate=1.25e-3, reference_batch_size=512, drop_path_rate=0.1,
    weight_decay=0.05, warmup_fraction=20 / 100, min_learning_rate_ratio=2.5e-7 / 1.25e-3, label_smoothing=0.1,
)
FINETUNE_PRESETS: dict[str, FinetunePreset] = {
    preset.name: preset
    for preset in (
        FinetunePreset(
            name="beit-base", description="BEiT-base after self-supervised pre-training, ImageNet-1k",
            source="microsoft/unilm beit/get_started_for_image_classification.md (BEiT-base: --batch_size 128 x 8 "
                   "GPUs --lr 4e-3 --warmup_epochs 20 --epochs 100 --layer_decay 0.65 --drop_path 0.1); "
                   "run_class_finetuning.py (--min_lr 1e-6, --smoothing 0.1)",
            epochs=100, batch_size=1024, base_learning_rate=4e-3, reference_batch_size=1024, layer_decay=0.65,
            drop_path_rate=0.1, weight_decay=0.05, warmup_fraction=20 / 100, min_learning_rate_ratio=1e-6 / 4e-3,
            label_smoothing=0.1,
        ),
        FinetunePreset(
            name="mae-base", description="MAE ViT-B/16, ImageNet-1k",
            source="facebookresearch/mae FINETUNE.md (--batch_size 32 x 32 GPUs --blr 5e-4 --layer_decay 0.65 "
                   "--drop_path 0.1 --epochs 100); main_finetune.py (--warmup_epochs 5, --min_lr 1e-6, --smoothing 0.1)",
            epochs=100, batch_size=1024, base_learning_rate=5e-4, reference_batch_size=256, layer_decay=0.65,
            drop_path_rate=0.1, weight_decay=0.05, warmup_fraction=5 / 100, min_learning_rate_ratio=1e-6 / 2e-3,
            label_smoothing=0.1,
        ),
        FinetunePreset(
            name="simmim-vit-base", description="SimMIM ViT-B/16 (800-epoch pre-training), ImageNet-1k at 224 px",
            source="microsoft/SimMIM configs/vit_base__800ep/simmim_finetune__vit_base__img224__800ep.yaml; "
                   "main_finetune.py (batch 128 x 16 GPUs, BASE_LR x batch / 512), config.py (LABEL_SMOOTHING 0.1)",
            layer_decay=0.65, **_SIMMIM_FINETUNE,
        ),
        FinetunePreset(
            name="simmim-swin-base", description="SimMIM Swin-B (100-epoch pre-training), ImageNet-1k",
            source="microsoft/SimMIM configs/swin_base__100ep/simmim_finetune__swin_base__img224_window7__100ep.yaml; "
                   "main_finetune.py, config.py",
            layer_decay=0.9, **_SIMMIM_FINETUNE,
        ),
        FinetunePreset(
            name="simmim-swin-base-800ep", description="SimMIM Swin-B (800-epoch pre-training), ImageNet-1k",
            source="microsoft/SimMIM configs/swin_base__800ep/simmim_finetune__swin_base__img224_window7__800ep.yaml; "
                   "main_finetune.py, config.py",
            layer_decay=0.8, **_SIMMIM_FINETUNE,
        ),
    )
}


@dataclass(frozen=True)
class FinetuneSettings:
    """Every setting of `finetune` (defaults: hf-ssl's quick fine-tuning, not a paper's; see `FINETUNE_PRESETS`).

    Args:
        epochs, batch_size, learning_rate (peak), weight_decay: AdamW.
        layer_decay: layer-wise LR decay factor in (0, 1]; None disables it.
        drop_path_rate: stochastic depth while fine-tuning (`with_drop_path`).
        warmup_fraction: linear warm-up, as a fraction of the steps.
        min_learning_rate_ratio: the cosine ends at this fraction of the peak.
        label_smoothing: cross-entropy label smoothing.
    """

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float | None = 0.75
    drop_path_rate: float = 0.0
    warmup_fraction: float = 0.1
    min_learning_rate_ratio: float = 0.0
    label_smoothing: float = 0.0


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
    if preset not in FINETUNE_PRESETS:
        raise ValueError(f"finetune preset must be one of {sorted(FINETUNE_PRESETS)}, got {preset!r}")
    published = FINETUNE_PRESETS[preset]
    values = {name: getattr(published, name) for name in known if hasattr(published, name)}
    values.update(overrides)
    if "learning_rate" not in overrides:
        values["learning_rate"] = published.learning_rate(values["batch_size"])
    return FinetuneSettings(**values)


def finetune(
    backbone: nn.Module,
    train_pixel_values: torch.Tensor,
    train_labels: torch.Tensor,
    test_pixel_values: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.05,
    layer_decay: float | None = 0.75,
    warmup_fraction: float = 0.1,
    pooling: Pooling = "mean",
    seed: int = 0,
    drop_path_rate: float = 0.0,
    min_learning_rate_ratio: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[dict[str, float], BackboneClassifier]:
    """Fine-tune a copy of `backbone` with a linear head and report test accuracy.

    Args:
        backbone: ViTModel / BeitModel / SwinModel (or an hf-ssl pre-training model: its
            `get_backbone()`); it is copied, the caller's module is left untouched.
        train_pixel_values: (N, C, H, W) preprocessed images; train_labels: (N,).
        test_pixel_values: (M, C, H, W); test_labels: (M,).
        num_classes: C; defaults to ``max(labels) + 1``.
        epochs, batch_size, learning_rate, weight_decay: AdamW with linear warm-up
            (`warmup_fraction` of the steps) then cosine decay to ``min_learning_rate_ratio * learning_rate``.
        layer_decay: layer-wise LR decay factor in (0, 1]; None or 1.0 disables it.
        pooling: ``"mean"`` or ``"cls"``.
        drop_path_rate: stochastic depth of the last block while fine-tuning (`with_drop_path`).
        label_smoothing: cross-entropy label smoothing.

    Returns:
        ``(metrics, model)``: ``{"accuracy", "top5_accuracy"}`` on the test set and the tuned classifier.
    """
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1] or None, got {layer_decay}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    if not 0.0 <= min_learning_rate_ratio <= 1.0 or not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"min_learning_rate_ratio must be in [0, 1] and label_smoothing in [0, 1), got "
                         f"{min_learning_rate_ratio} and {label_smoothing}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_labels = torch.as_tensor(train_labels, dtype=torch.long)
    test_labels = torch.as_tensor(test_labels, dtype=torch.long)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    encoder = with_drop_path(copy.deepcopy(_encoder_of(backbone)), drop_path_rate)
    model = BackboneClassifier(encoder, num_classes, pooling)
    device = next(model.backbone.parameters()).device
    model.to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, learning_rate, weight_decay, layer_decay))
    total_steps = epochs * math.ceil(len(train_labels) / batch_size)
    warmup_steps = int(warmup_fraction * total_steps)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_learning_rate_ratio + (1.0 - min_learning_rate_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    for _ in range(epochs):
        for batch_index in torch.randperm(len(train_labels), generator=generator).split(batch_size):
            logits = model(train_pixel_values[batch_index].to(device))  # (b, C)
            loss = F.cross_entropy(logits, train_labels[batch_index].to(device), label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(batch.to(device)).float().cpu() for batch in test_pixel_values.split(batch_size * 4)])
    return classification_metrics(logits, test_labels), model
