"""DINOv2 recipe (`--method dinov2`): DINO + iBOT + KoLeo on a DINOv2-family encoder, from scratch or
continued from DINOv2 weights (``--model facebook/dinov2-small``, or any folder of such a model).

DINOv2, Oquab et al. 2023, arXiv:2304.07193. Every default is a value of facebookresearch/dinov2
dinov2/configs/ssl_default_config.yaml, except where the released models' train/vitl14.yaml
differs and is followed (separate iBOT head, Sinkhorn-Knopp centering; see `DINOv2Config`):

- optimizer: ``optim.base_lr 0.004`` at a batch of 1024 scaled by the square root of the batch
  ratio (``scaling_rule: sqrt_wrt_1024``, dinov2/utils/config.py), ``warmup_epochs 10`` of
  ``epochs 100``, cosine to ``min_lr 1e-6``, AdamW betas (0.9, 0.999), ``weight_decay 0.04`` ->
  ``weight_decay_end 0.4`` on a cosine, ``clip_grad 3.0``;
- parameter groups (dinov2/utils/param_groups.py ``get_params_groups_with_decay``): layer-wise
  learning-rate decay ``layerwise_decay 0.9`` over the encoder's blocks (embeddings, tokens and
  positions at depth 0, block i at i + 1, the final norm and the heads at full rate), the patch
  embedding at ``patch_embed_lr_mult 0.2`` of its depth's rate; no weight decay on biases, norms
  and layer scales, weight decay on everything else (tokens and positions included);
- teacher: ``momentum_teacher 0.992`` raised to 1 on a cosine; temperature 0.04 -> 0.07 over
  ``warmup_teacher_temp_epochs 30``; ``freeze_last_layer_epochs 1`` (both heads' prototype layers);
- crops (dinov2/data/augmentations.py, DINO's pipeline): ``global_crops_scale 0.32 1``,
  ``local_crops_number 8``, ``local_crops_scale 0.05 0.32``, 96-px local crops for 224-px global ones;
- masking: half of the global crops, 10-50 % of their patches in blocks (`hf_ssl.masking.dinov2_masks`).

Images up to 64 px (the bundled data) take DINO's small-image head and crops (`hf_ssl.modeling.dino`
recipe, measured there for DINO). Epochs become steps as in DINO's recipe (a stream counts 100
epochs). Deviations, imposed by the shared loop: the global gradient norm is clipped (official:
each tensor's), and the student has no stochastic depth (official ``drop_path_rate 0.3``).

Continued pre-training: ``--model facebook/dinov2-small`` (or a folder) starts student and teacher
from those weights; the published layer-wise decay keeps the early blocks close to them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hf_ssl.recipes.base import BuildContext, MethodCard, OptimizerDefaults, register_recipe
from hf_ssl.transforms.multicrop import GLOBAL_CROP_SIZE

from ..dino.recipe import SMALL_IMAGE_HEAD, SMALL_IMAGE_SIZE, DINOArguments, DINORecipe, _check_arguments, local_crop_size
from . import BackboneForDINOv2, DINOv2Config
from .configuration_dinov2 import CENTERINGS, MASKABLE_MODEL_TYPES

GLOBAL_CROPS_SCALE = (0.32, 1.0)
LOCAL_CROPS_SCALE = (0.05, 0.32)
# Encoder parameters at depth 0 of the layer-wise decay (the official list: pos_embed, patch_embed,
# mask_token, cls_token, register_tokens), in transformers' Dinov2 names.
EMBEDDING_PARAMETER = re.compile(r"\.embeddings\.")
BLOCK_PARAMETER = re.compile(r"\.encoder\.layer\.(\d+)\.")


@dataclass
class DINOv2Arguments(DINOArguments):
    """DINOv2's flags (``--method dinov2 --help``): DINO's, with DINOv2's defaults, and its own."""

    global_crops_scale: list[float] | None = field(
        default=None, metadata={"help": "Area range of the two global crops (min max); default 0.32 1, or 0.7 1 at "
                                        "--image_size <= 64."})
    local_crops_scale: list[float] | None = field(
        default=None, metadata={"help": "Area range of the local crops (min max); default 0.05 0.32, or 0.25 0.5 at "
                                        "--image_size <= 64."})
    momentum_teacher: float = field(
        default=0.992, metadata={"help": "Teacher EMA momentum at step 0, raised to 1 on a cosine (DINOv2: 0.992)."})
    layerwise_decay: float = field(
        default=0.9, metadata={"help": "Learning-rate factor per encoder block below the top (DINOv2: 0.9; 1 disables)."})
    patch_embed_lr_multiplier: float = field(
        default=0.2, metadata={"help": "Extra learning-rate factor of the patch embedding (DINOv2: 0.2)."})
    centering: str = field(
        default="sinkhorn_knopp", metadata={"help": "Teacher targets: sinkhorn_knopp (released models) or centering "
                                                    "(DINO's running centre)."})


def check_arguments(arguments: DINOv2Arguments) -> None:
    """Raise a ValueError naming the first unusable flag."""
    _check_arguments(arguments)
    if not 0 < arguments.layerwise_decay <= 1:
        raise ValueError(f"--layerwise_decay must be in (0, 1], got {arguments.layerwise_decay}")
    if not arguments.patch_embed_lr_multiplier > 0:
        raise ValueError(f"--patch_embed_lr_multiplier must be > 0, got {arguments.patch_embed_lr_multiplier}")
    if arguments.centering not in CENTERINGS:
        raise ValueError(f"--centering must be one of {', '.join(CENTERINGS)}, got {arguments.centering!r}")


def layer_depth(name: str, num_blocks: int) -> int:
    """A student parameter's depth for the layer-wise decay: 0 for the encoder's embeddings, i + 1 for
    its block i, ``num_blocks + 1`` for the final norm and the heads (official ``get_vit_lr_decay_rate``)."""
    if ".backbone." in f".{name}" and EMBEDDING_PARAMETER.search(name):
        return 0
    block = BLOCK_PARAMETER.search(name)
    return int(block.group(1)) + 1 if block else num_blocks + 1


class DINOv2Recipe(DINORecipe):
    """DINO's recipe (crops, schedules, prototype freeze, EMA) with DINOv2's model, defaults and groups."""

    name = "dinov2"
    description = "DINOv2 (Oquab et al. 2023): DINO + iBOT masked patches + KoLeo, from scratch or continued from DINOv2"
    registrations = ((DINOv2Config, BackboneForDINOv2, ("AutoModel", "AutoModelForPreTraining")),)
    card = MethodCard(
        title="DINOv2",
        description=(
            "DINOv2 (Oquab et al. 2023, arXiv:2304.07193) trains a student to match its EMA teacher on the CLS "
            "token of every crop (DINO) and on the patch tokens the student sees masked (iBOT), with the teacher's "
            "outputs balanced over the prototypes by Sinkhorn-Knopp and a KoLeo term spreading the student's "
            "features. It can continue from the released DINOv2 weights on your own images."
        ),
        limitation=(
            "DINOv2's recipe was tuned for ImageNet-22k and LVD-142M at batch 1024 and above; small datasets and "
            "batches need a higher teacher momentum, and continued training can forget what the starting "
            "weights knew: compare with them (the report's baselines) before keeping the result."
        ),
        tags=("dinov2", "ibot", "self-distillation", "masked-image-modeling"),
    )
    arguments_class = DINOv2Arguments
    optimizer = OptimizerDefaults(
        base_learning_rate=4e-3,
        reference_batch_size=1024,
        learning_rate_scaling="sqrt",
        weight_decay=0.04,
        final_weight_decay=0.4,
        betas=(0.9, 0.999),
        warmup_fraction=0.1,
        min_learning_rate_ratio=1e-6 / 4e-3,
        gradient_clip_norm=3.0,
    )
    default_model = "dinov2-small"
    bundled_model = "dinov2-micro"
    default_image_size = GLOBAL_CROP_SIZE
    supported_backbones = MASKABLE_MODEL_TYPES
    published_crop_scales = (GLOBAL_CROPS_SCALE, LOCAL_CROPS_SCALE)

    def checked_arguments(self, context) -> DINOv2Arguments:
        arguments = context.method_arguments or DINOv2Arguments()
        check_arguments(arguments)
        return arguments

    # ----- inputs

    def describe_views(self, context: BuildContext) -> str:
        local_crops = (context.method_arguments or DINOv2Arguments()).local_crops_number
        local = f" + {local_crops} local crops of {local_crop_size(context)} px" if local_crops else ""
        return f"2 global crops of {context.image_size} px (half of them with 10-50 % of patches masked){local}"

    # ----- model

    def build_model(self, context: BuildContext) -> BackboneForDINOv2:
        arguments = self.checked_arguments(context)
        self.check_backbone(context.backbone)
        fields = dict(backbone_config=context.backbone.nested(), image_size=context.image_size,
                      centering=arguments.centering, layerwise_decay=arguments.layerwise_decay,
                      patch_embed_lr_multiplier=arguments.patch_embed_lr_multiplier)
        if context.image_size <= SMALL_IMAGE_SIZE:
            fields.update(SMALL_IMAGE_HEAD)
            fields.update({f"patch_{name}": value for name, value in SMALL_IMAGE_HEAD.items() if name.startswith("head_")})
        fields.update(context.model_overrides)
        return BackboneForDINOv2(DINOv2Config(**fields))

    # ----- optimisation

    def parameter_groups(self, model: BackboneForDINOv2, weight_decay: float) -> list[dict]:
        """DINOv2's groups: an ``lr_scale`` of ``layerwise_decay ** (num_blocks + 1 - depth)`` (times
        ``patch_embed_lr_multiplier`` for the patch embedding; both from the model's config), no weight
        decay on biases, norms and layer scales."""
        config = model.config
        num_blocks = model.config.backbone_config["num_hidden_layers"]
        groups: dict[tuple[float, bool], dict] = {}
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            scale = config.layerwise_decay ** (num_blocks + 1 - layer_depth(name, num_blocks))
            if "patch_embeddings" in name:
                scale *= config.patch_embed_lr_multiplier
            decays = not (name.endswith(".bias") or "norm" in name or "layer_scale" in name)
            group = groups.setdefault((scale, decays), {"params": [], "lr_scale": scale, "apply_weight_decay": decays,
                                                        "weight_decay": weight_decay if decays else 0.0})
            group["params"].append(parameter)
        return list(groups.values())


DINOV2 = register_recipe(DINOv2Recipe())

__all__ = ["DINOV2", "DINOv2Arguments", "DINOv2Recipe", "check_arguments", "layer_depth"]
