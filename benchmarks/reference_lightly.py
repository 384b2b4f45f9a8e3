"""lightly as the reference for the joint-embedding family and DINO, on the SAME backbone module.

Each builder assembles what lightly's own examples (lightly/examples/pytorch/*.py, 1.6.0) write:
lightly's heads (`lightly.models.modules`), losses (`lightly.loss`) and momentum update
(`lightly.models.utils.update_momentum`), one network call per view, around hf-ssl's
`VisionBackbone` of the case's size (the same transformers / timm module the hf-ssl models use), so
that the comparison is about the method code, not the encoder. Head sizes come from the hf-ssl
config when the method is registered, else from the published defaults below.

lightly is a benchmark-only dependency: ``pip install --no-deps --target .lightly lightly`` and
``--lightly_path .lightly`` (it runs on the project's torch / torchvision / timm).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from hf_ssl.recipes import parameter_groups

from steps import ModelStep

if TYPE_CHECKING:
    from cases import CaseInputs

# Teacher / momentum encoders: the published starting momentum (DINO, BYOL 0.996; MoCo v3 0.99).
MOMENTUM = 0.996


def _backbone(inputs: CaseInputs) -> nn.Module:
    from hf_ssl.backbones import VisionBackbone, resolve_backbone

    return VisionBackbone(resolve_backbone(inputs.size.model, inputs.image_size).nested())


def _two_views(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    views = batch["pixel_values"]  # (B, 2, C, H, W)
    return views[:, 0], views[:, 1]


def _momentum_copy(module: nn.Module, build: Callable[[], nn.Module] | None = None) -> nn.Module:
    """A gradient-free copy of `module`: deep-copied, or built by `build` and loaded with its weights
    (modules with ``weight_norm`` cannot be deep-copied; lightly's DINO example builds a second head)."""
    from lightly.models.utils import deactivate_requires_grad

    if build is None:
        copied = copy.deepcopy(module)
    else:
        copied = build()
        copied.load_state_dict(module.state_dict())
    deactivate_requires_grad(copied)
    return copied


def _model_step(parts: dict[str, nn.Module], loss: Callable, inputs: CaseInputs, note: str,
                momentum_pairs: tuple[tuple[str, str], ...] = ()) -> ModelStep:
    from lightly.models.utils import update_momentum

    module = nn.ModuleDict(parts)

    def after_optimizer_step() -> None:
        for online, momentum in momentum_pairs:
            update_momentum(module[online], module[momentum], m=MOMENTUM)

    return ModelStep(
        module=module,
        loss=loss,
        parameter_groups=parameter_groups(module, inputs.optimizer.weight_decay),
        after_optimizer_step=after_optimizer_step if momentum_pairs else None,
        note=note,
    )


def _projected_pair(inputs: CaseInputs, backbone: nn.Module, projection: nn.Module, criterion: nn.Module,
                    note: str) -> ModelStep:
    """backbone -> projection on each view, ``criterion(first, second)`` (SimCLR, Barlow Twins, VICReg)."""
    parts = {"backbone": backbone, "projection": projection, "criterion": criterion}

    def loss(module, batch):
        first, second = (module["projection"](module["backbone"](view)) for view in _two_views(batch))
        return module["criterion"](first, second)

    return _model_step(parts, loss, inputs, note)


def lightly_simclr(inputs: CaseInputs) -> ModelStep:
    """SimCLR: `SimCLRProjectionHead` + `NTXentLoss` (lightly/examples/pytorch/simclr.py)."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    backbone = _backbone(inputs)
    hidden, output = inputs.config_value("projection_hidden_size", 2048), inputs.config_value("projection_dim", 128)
    return _projected_pair(inputs, backbone, SimCLRProjectionHead(backbone.feature_dimension, hidden, output),
                           NTXentLoss(temperature=inputs.config_value("temperature", 0.1)),
                           f"SimCLRProjectionHead({hidden}, {output}) + NTXentLoss")


def _with_momentum_encoder(inputs: CaseInputs, backbone: nn.Module, projection: nn.Module, prediction: nn.Module,
                           criterion: nn.Module, combine: Callable, note: str) -> ModelStep:
    """Online backbone -> projection -> prediction on both views, momentum backbone -> projection
    (no gradient) as targets, ``combine(criterion, online, targets)`` -> loss (MoCo v3, BYOL)."""
    parts = {"backbone": backbone, "projection": projection, "prediction": prediction,
             "momentum_backbone": _momentum_copy(backbone), "momentum_projection": _momentum_copy(projection),
             "criterion": criterion}

    def loss(module, batch):
        views = _two_views(batch)
        online = [module["prediction"](module["projection"](module["backbone"](view))) for view in views]
        with torch.no_grad():
            targets = [module["momentum_projection"](module["momentum_backbone"](view)) for view in views]
        return combine(module["criterion"], online, targets)

    return _model_step(parts, loss, inputs, note,
                       (("backbone", "momentum_backbone"), ("projection", "momentum_projection")))


def lightly_moco_v3(inputs: CaseInputs) -> ModelStep:
    """MoCo v3: 3-layer `MoCoProjectionHead` with batch norm, 2-layer predictor, momentum encoder,
    symmetric `NTXentLoss` between the queries and the other view's keys (lightly has no MoCo v3
    example; its `MoCoProjectionHead` documents these v3 settings)."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead

    backbone = _backbone(inputs)
    hidden, output = inputs.config_value("projection_hidden_size", 4096), inputs.config_value("projection_dim", 256)
    layers = inputs.config_value("projection_num_layers", 3)
    prediction_hidden = inputs.config_value("prediction_hidden_size", 4096)
    return _with_momentum_encoder(
        inputs, backbone,
        MoCoProjectionHead(backbone.feature_dimension, hidden, output, num_layers=layers, batch_norm=True),
        MoCoProjectionHead(output, prediction_hidden, output, num_layers=2, batch_norm=True),
        NTXentLoss(temperature=inputs.config_value("temperature", 0.2)),
        lambda criterion, queries, keys: criterion(queries[0], keys[1]) + criterion(queries[1], keys[0]),
        f"MoCoProjectionHead({hidden}, {output}, {layers} layers) + predictor + NTXentLoss",
    )


def lightly_byol(inputs: CaseInputs) -> ModelStep:
    """BYOL: `BYOLProjectionHead`, `BYOLPredictionHead`, momentum network, `NegativeCosineSimilarity`
    (lightly/examples/pytorch/byol.py)."""
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

    backbone = _backbone(inputs)
    hidden, output = inputs.config_value("projection_hidden_size", 4096), inputs.config_value("projection_dim", 256)
    return _with_momentum_encoder(
        inputs, backbone, BYOLProjectionHead(backbone.feature_dimension, hidden, output),
        BYOLPredictionHead(output, inputs.config_value("prediction_hidden_size", 4096), output),
        NegativeCosineSimilarity(),
        lambda criterion, predictions, targets: 0.5 * (criterion(predictions[0], targets[1])
                                                       + criterion(predictions[1], targets[0])),
        f"BYOLProjectionHead({hidden}, {output}) + BYOLPredictionHead",
    )


def lightly_simsiam(inputs: CaseInputs) -> ModelStep:
    """SimSiam: `SimSiamProjectionHead`, `SimSiamPredictionHead`, stop-gradient, `NegativeCosineSimilarity`
    (lightly/examples/pytorch/simsiam.py)."""
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

    backbone = _backbone(inputs)
    hidden, output = inputs.config_value("projection_hidden_size", 2048), inputs.config_value("projection_dim", 2048)
    parts = {
        "backbone": backbone, "projection": SimSiamProjectionHead(backbone.feature_dimension, hidden, output),
        "prediction": SimSiamPredictionHead(output, inputs.config_value("prediction_hidden_size", 512), output),
        "criterion": NegativeCosineSimilarity(),
    }

    def loss(module, batch):
        embeddings = [module["projection"](module["backbone"](view)) for view in _two_views(batch)]
        predictions = [module["prediction"](embedding) for embedding in embeddings]
        return 0.5 * (module["criterion"](predictions[0], embeddings[1].detach())
                      + module["criterion"](predictions[1], embeddings[0].detach()))

    return _model_step(parts, loss, inputs, f"SimSiamProjectionHead({hidden}, {output}) + SimSiamPredictionHead")


def lightly_barlow_twins(inputs: CaseInputs) -> ModelStep:
    """Barlow Twins: `BarlowTwinsProjectionHead` + `BarlowTwinsLoss` (lightly/examples/pytorch/barlowtwins.py)."""
    from lightly.loss import BarlowTwinsLoss
    from lightly.models.modules import BarlowTwinsProjectionHead

    backbone = _backbone(inputs)
    hidden, output = inputs.config_value("projection_hidden_size", 8192), inputs.config_value("projection_dim", 8192)
    return _projected_pair(inputs, backbone, BarlowTwinsProjectionHead(backbone.feature_dimension, hidden, output),
                           BarlowTwinsLoss(), f"BarlowTwinsProjectionHead({hidden}, {output}) + BarlowTwinsLoss")


def lightly_vicreg(inputs: CaseInputs) -> ModelStep:
    """VICReg: `VICRegProjectionHead` (3 layers) + `VICRegLoss` (lightly/examples/pytorch/vicreg.py)."""
    from lightly.loss import VICRegLoss
    from lightly.models.modules.heads import (
        VICRegProjectionHead,  # not re-exported by lightly.models.modules
    )

    backbone = _backbone(inputs)
    hidden, output = inputs.config_value("projection_hidden_size", 8192), inputs.config_value("projection_dim", 8192)
    layers = inputs.config_value("projection_num_layers", 3)
    return _projected_pair(inputs, backbone,
                           VICRegProjectionHead(backbone.feature_dimension, hidden, output, num_layers=layers), VICRegLoss(),
                           f"VICRegProjectionHead({hidden}, {output}, {layers} layers) + VICRegLoss")


def lightly_dino(inputs: CaseInputs) -> ModelStep:
    """DINO: `DINOProjectionHead`, EMA teacher, `DINOLoss` over 2 global + L local crops, teacher on the
    global crops only (lightly/examples/pytorch/dino.py)."""
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead

    backbone = _backbone(inputs)
    hidden = inputs.config_value("head_hidden_dim", 2048)
    bottleneck = inputs.config_value("head_bottleneck_dim", 256)
    output = inputs.config_value("head_output_dim", 65536)

    def build_head() -> nn.Module:
        return DINOProjectionHead(backbone.feature_dimension, hidden, bottleneck, output, batch_norm=False,
                                  freeze_last_layer=1, norm_last_layer=inputs.config_value("norm_last_layer", True))

    head = build_head()
    parts = {"backbone": backbone, "head": head, "teacher_backbone": _momentum_copy(backbone),
             "teacher_head": _momentum_copy(head, build_head), "criterion": DINOLoss(output_dim=output)}

    def loss(module, batch):
        global_crops = batch["global_crops"]  # (B, 2, C, H, W)
        local_crops = batch.get("local_crops")  # (B, L, C, h, w)
        views = [global_crops[:, index] for index in range(global_crops.shape[1])]
        if local_crops is not None:
            views += [local_crops[:, index] for index in range(local_crops.shape[1])]
        with torch.no_grad():
            teacher = [module["teacher_head"](module["teacher_backbone"](view)) for view in views[:global_crops.shape[1]]]
        student = [module["head"](module["backbone"](view)) for view in views]
        return module["criterion"](teacher, student, teacher_temp=0.04)

    return _model_step(parts, loss, inputs, f"DINOProjectionHead({hidden}, {bottleneck}, {output}) + DINOLoss",
                       (("backbone", "teacher_backbone"), ("head", "teacher_head")))


def lightly_dinov2(inputs: CaseInputs) -> ModelStep:
    """DINOv2: lightly's `DINOProjectionHead` for the CLS tokens and another for the masked patch tokens,
    an EMA teacher, `DINOLoss` over 2 global + L local crops, `IBOTPatchLoss` on the masked patches of
    the global crops, `KoLeoLoss` (weight 0.1) per global crop: lightly's losses with their own
    softmax centring, as lightly/examples/pytorch/dinov2.py composes them, on the same DINOv2 module
    and the same masks (`hf_ssl.masking.dinov2_masks`, drawn in the step on both sides)."""
    from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
    from lightly.models.modules import DINOProjectionHead

    from hf_ssl.masking import dinov2_masks

    backbone = _backbone(inputs)
    encoder_config = backbone.model.config
    prefix_tokens = 1 + encoder_config.num_register_tokens

    def head_builder(prefix: str) -> Callable[[], nn.Module]:
        sizes = [inputs.config_value(f"{prefix}_{name}", default) for name, default in
                 (("hidden_dim", 2048), ("bottleneck_dim", 256), ("output_dim", 65536))]
        return lambda: DINOProjectionHead(backbone.feature_dimension, *sizes, batch_norm=False, freeze_last_layer=1)

    build_head, build_patch_head = head_builder("head"), head_builder("patch_head")
    head, patch_head = build_head(), build_patch_head()
    parts = {"backbone": backbone, "head": head, "patch_head": patch_head, "teacher_backbone": _momentum_copy(backbone),
             "teacher_head": _momentum_copy(head, build_head), "teacher_patch_head": _momentum_copy(patch_head, build_patch_head),
             "criterion": DINOLoss(output_dim=inputs.config_value("head_output_dim", 65536)),
             "patch_criterion": IBOTPatchLoss(output_dim=inputs.config_value("patch_head_output_dim", 65536)),
             "koleo": KoLeoLoss()}

    def loss(module, batch):
        global_crops = batch["global_crops"]  # (B, 2, C, H, W)
        global_batch = global_crops.transpose(0, 1).flatten(0, 1)  # (2B, C, H, W)
        grid = (global_batch.shape[-2] // encoder_config.patch_size, global_batch.shape[-1] // encoder_config.patch_size)
        masks = dinov2_masks(global_batch.shape[0], grid).to(global_batch.device)  # (2B, N)
        with torch.no_grad():
            teacher_tokens = module["teacher_backbone"].model(pixel_values=global_batch).last_hidden_state
            teacher = module["teacher_head"](teacher_tokens[:, 0]).chunk(2)
            teacher_patches = module["teacher_patch_head"](teacher_tokens[:, prefix_tokens:][masks])
        tokens = module["backbone"].model(pixel_values=global_batch, bool_masked_pos=masks).last_hidden_state
        student = [*module["head"](tokens[:, 0]).chunk(2)]
        local_crops = batch.get("local_crops")  # (B, L, C, h, w)
        if local_crops is not None:
            student += [module["head"](module["backbone"](local_crops[:, index])) for index in range(local_crops.shape[1])]
        patches = module["patch_head"](tokens[:, prefix_tokens:][masks])
        koleo = sum(module["koleo"](crop) for crop in tokens[:, 0].chunk(2))
        return (module["criterion"](list(teacher), student, teacher_temp=0.04)
                + module["patch_criterion"](teacher_patches, patches, masks.view(-1, *grid), teacher_temp=0.04)
                + 0.1 * koleo)

    return _model_step(parts, loss, inputs, "2 x DINOProjectionHead + DINOLoss + IBOTPatchLoss + KoLeoLoss",
                       (("backbone", "teacher_backbone"), ("head", "teacher_head"), ("patch_head", "teacher_patch_head")))


LIGHTLY_REFERENCES: dict[str, Callable[[CaseInputs], ModelStep]] = {
    "dino": lightly_dino,
    "dinov2": lightly_dinov2,
    "simclr": lightly_simclr,
    "moco_v3": lightly_moco_v3,
    "byol": lightly_byol,
    "simsiam": lightly_simsiam,
    "barlow_twins": lightly_barlow_twins,
    "vicreg": lightly_vicreg,
}

__all__ = ["LIGHTLY_REFERENCES", "MOMENTUM"]
