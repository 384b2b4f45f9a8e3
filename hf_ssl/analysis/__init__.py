"""Attention analysis of ViT encoders: per-head statistics, CKA between layers, DINO attention maps.

Xie et al. 2022, "Revealing the Dark Secrets of Masked Image Modeling", arXiv:2205.13543
(attention distance, entropy, KL between heads, CKA); Kornblith et al. 2019, arXiv:1905.00414
(linear CKA); Caron et al. 2021, arXiv:2104.14294 (CLS attention maps and their masks).
Command line: ``python -m hf_ssl.cli.analyze {attention,metrics,cka}``.
"""

from .attention import (
    attention_entropy,
    average_attention_distance,
    head_kl_divergence,
    pairwise_head_kl_divergence,
    patch_attention,
    patch_centre_distances,
    prefix_attention_share,
)
from .cka import cka_matrix, linear_cka
from .encoders import (
    SUPPORTED_MODEL_TYPES,
    AnalysisInputError,
    EncoderOutputs,
    PatchGrid,
    bundled_images,
    bundled_masks,
    check_vit,
    displayable_images,
    encode,
    load_image_processor,
    load_images,
    load_vit_encoder,
    prepare_vit,
    preprocess_images,
)
from .maps import (
    DINO_MASK_MASS,
    attention_mass_masks,
    cls_attention_maps,
    jaccard_references,
    jaccard_summary,
    mask_jaccard,
)
from .statistics import (
    REPRESENTATION_POOLINGS,
    AttentionStatistics,
    ClsAttentionMaps,
    attention_statistics,
    cls_attention,
    cross_model_cka,
    layer_representations,
    pool_representation,
    representation_cka,
)

__all__ = [
    "DINO_MASK_MASS",
    "REPRESENTATION_POOLINGS",
    "SUPPORTED_MODEL_TYPES",
    "AnalysisInputError",
    "AttentionStatistics",
    "ClsAttentionMaps",
    "EncoderOutputs",
    "PatchGrid",
    "attention_entropy",
    "attention_mass_masks",
    "attention_statistics",
    "average_attention_distance",
    "bundled_images",
    "bundled_masks",
    "check_vit",
    "cka_matrix",
    "cls_attention",
    "cls_attention_maps",
    "cross_model_cka",
    "displayable_images",
    "encode",
    "head_kl_divergence",
    "jaccard_references",
    "jaccard_summary",
    "layer_representations",
    "linear_cka",
    "load_image_processor",
    "load_images",
    "load_vit_encoder",
    "mask_jaccard",
    "pairwise_head_kl_divergence",
    "patch_attention",
    "patch_centre_distances",
    "pool_representation",
    "prefix_attention_share",
    "prepare_vit",
    "preprocess_images",
    "representation_cka",
]
