"""End-to-end fine-tuning of a pre-trained encoder with a linear classification head.

The classifier follows SplitMask's downstream recipe (El-Nouby et al. 2021, arXiv:2112.10740):
logits = W · LayerNorm(mean of the encoder's patch tokens). Optional layer-wise learning-rate
decay (BEiT, Bao et al. 2021, arXiv:2106.08254): block i of L gets ``lr * decay ** (L + 1 - i)``,
the patch embedding ``lr * decay ** (L + 1)``, the head the full ``lr``.
"""

from __future__ import annotations

import copy
import math
import re

import torch
import torch.nn.functional as F
from torch import nn

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


def parameter_groups(
    model: BackboneClassifier, learning_rate: float, weight_decay: float, layer_decay: float | None
) -> list[dict]:
    """AdamW groups: weight decay on >= 2-D weights only, learning rates scaled per depth."""
    config = model.backbone.config
    num_blocks = num_encoder_blocks(config)
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        depth = block_index(name[len("backbone.") :], config) if name.startswith("backbone.") else num_blocks + 1
        scale = 1.0 if layer_decay is None else layer_decay ** (num_blocks + 1 - depth)
        decays = parameter.ndim >= 2
        group = groups.setdefault(
            (depth, decays),
            {"params": [], "lr": learning_rate * scale, "weight_decay": weight_decay if decays else 0.0},
        )
        group["params"].append(parameter)
    return list(groups.values())


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
) -> tuple[dict[str, float], BackboneClassifier]:
    """Fine-tune a copy of `backbone` with a linear head and report test accuracy.

    Args:
        backbone: ViTModel / SwinModel (or an hf-ssl pre-training model: its `get_backbone()`);
            it is copied, the caller's module is left untouched.
        train_pixel_values: (N, C, H, W) preprocessed images; train_labels: (N,).
        test_pixel_values: (M, C, H, W); test_labels: (M,).
        num_classes: C; defaults to ``max(labels) + 1``.
        epochs, batch_size, learning_rate, weight_decay: AdamW with linear warm-up
            (`warmup_fraction` of the steps) then cosine decay.
        layer_decay: layer-wise LR decay factor in (0, 1]; None or 1.0 disables it.
        pooling: ``"mean"`` or ``"cls"``.

    Returns:
        ``(metrics, model)``: ``{"accuracy", "top5_accuracy"}`` on the test set and the tuned classifier.
    """
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1] or None, got {layer_decay}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_labels = torch.as_tensor(train_labels, dtype=torch.long)
    test_labels = torch.as_tensor(test_labels, dtype=torch.long)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    model = BackboneClassifier(copy.deepcopy(_encoder_of(backbone)), num_classes, pooling)
    device = next(model.backbone.parameters()).device
    model.to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, learning_rate, weight_decay, layer_decay))
    total_steps = epochs * math.ceil(len(train_labels) / batch_size)
    warmup_steps = int(warmup_fraction * total_steps)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    for _ in range(epochs):
        for batch_index in torch.randperm(len(train_labels), generator=generator).split(batch_size):
            logits = model(train_pixel_values[batch_index].to(device))  # (b, C)
            loss = F.cross_entropy(logits, train_labels[batch_index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(batch.to(device)).float().cpu() for batch in test_pixel_values.split(batch_size * 4)])
    return classification_metrics(logits, test_labels), model
