"""What the masked-image-modeling recipes share: encoder fields, BEiT's encoder, official decay groups.

SplitMask, BEiT, SimMIM and MAE keep their encoder's fields flat in their own config (HF names),
so a preset, a transformers ViT / Swin folder or Hub id all become the same dict of fields
(`masked_vit_fields`). BEiT, SplitMask and SimMIM's ViT-B recipe pre-train the BEiT ViT
(`beit_pretraining_encoder`), and each official code base has its own weight-decay exemptions
(`decay_groups`).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from hf_ssl.backbones import BackboneSpec

from .base import BuildContext, Recipe, weight_decay_groups

VIT_FIELDS = (
    "image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "layer_norm_eps", "qkv_bias", "initializer_range",
)
SWIN_FIELDS = (
    "image_size", "patch_size", "num_channels", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio",
    "hidden_act", "layer_norm_eps", "qkv_bias", "initializer_range",
)


def masked_vit_fields(recipe, backbone: BackboneSpec) -> dict:
    """The ViT (or, for recipes that support it, Swin) fields of `backbone`, after checking the family.

    Raises:
        ValueError: the recipe cannot mask this backbone (`Recipe.check_backbone`).
    """
    recipe.check_backbone(backbone)
    config = backbone.transformers_config()
    names = SWIN_FIELDS if backbone.family == "swin" else VIT_FIELDS
    fields = {name: getattr(config, name) for name in names if hasattr(config, name)}
    for name in ("image_size", "patch_size"):
        if isinstance(fields.get(name), (list, tuple)):
            fields[name] = int(fields[name][0])
    return fields


# Up to this input side the plain ViT is kept (a small-image setting, like 8-px patches): on the
# bundled digits SplitMask learns with it and not with BEiT's ViT (docs/small-image-defaults.md).
SMALL_IMAGE_PLAIN_VIT_SIZE = 64


def beit_pretraining_encoder(context, num_hidden_layers: int) -> dict:
    """Config fields of BEiT's pre-training ViT, the one BEiT, SplitMask and SimMIM's ViT-B use.

    Drop path 0.1, layer scale 0.1 (1e-5 from 24 blocks on, "0.1 for base, 1e-5 for large"), a
    relative position bias shared by all blocks and no absolute positions (microsoft/unilm
    beit/README.md pre-training commands and run_beit_pretraining.py defaults; SimMIM
    configs/vit_base__800ep/simmim_pretrain__vit_base__img224__800ep.yaml). Empty when the run
    starts from a pre-trained ViT checkpoint (its architecture is kept), when the user asked for
    ``encoder_type="vit"``, and for images up to `SMALL_IMAGE_PLAIN_VIT_SIZE` px (see there).
    """
    if context.backbone.weights is not None or context.model_overrides.get("encoder_type", "beit") != "beit":
        return {}
    if context.image_size <= SMALL_IMAGE_PLAIN_VIT_SIZE and "encoder_type" not in context.model_overrides:
        return {}
    return dict(
        encoder_type="beit",
        drop_path_rate=0.1,
        layer_scale_init_value=0.1 if num_hidden_layers < 24 else 1e-5,
        use_absolute_position_embeddings=False,
        use_shared_relative_position_bias=True,
    )


def decay_groups(model: nn.Module, weight_decay: float, exempt_names: Iterable[str]) -> list[dict]:
    """AdamW groups as an official code base builds them: parameters with fewer than 2 dimensions
    (biases, norms, layer scales) and those with a component of their dotted name in
    `exempt_names` get no weight decay; every other trainable parameter does.

    """
    exempt_names = set(exempt_names)
    return weight_decay_groups(model, weight_decay, lambda name, parameter: (
        parameter.ndim < 2 or bool(exempt_names & set(name.split(".")))))


class MaskedImageModelingRecipe(Recipe):
    """A masked-image-modeling recipe: one published augmentation view per image and the official
    code's weight-decay exemptions.

    Class attributes a subclass sets:
        augmentation: its `hf_ssl.transforms.masked.MaskedImageAugmentation`.
        decay_exemptions: parameter-name components exempt from weight decay besides < 2-D
            parameters (`decay_groups`).
        published_settings: rows of docs/recipes.md (`hf_ssl.cli.recipe_docs.PublishedSetting`).
        documentation_notes: a paragraph printed under the method's table.
    """

    augmentation = None
    decay_exemptions: tuple[str, ...] = ()
    published_settings: tuple = ()
    documentation_notes: str = ""

    def build_transform(self, context: BuildContext):
        from hf_ssl.transforms import ImageRowTransform
        from hf_ssl.transforms.masked import build_masked_image_transform

        return ImageRowTransform(
            build_masked_image_transform(self.augmentation, context.image_size, context.image_mean, context.image_std)
        )

    def parameter_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        return decay_groups(model, weight_decay, self.decay_exemptions)


__all__ = [
    "SWIN_FIELDS",
    "VIT_FIELDS",
    "SMALL_IMAGE_PLAIN_VIT_SIZE",
    "MaskedImageModelingRecipe",
    "beit_pretraining_encoder",
    "decay_groups",
    "masked_vit_fields",
]
