"""Losses as plain functions on tensors, usable without any hf-ssl model.

- masked image modeling: `masked_token_cross_entropy` (BEiT, SplitMask), `masked_l1_loss` (SimMIM)
- contrastive: `info_nce_loss` (SplitMask), `nt_xent_loss` (SimCLR), `moco_v3_loss`
- negative-free: `byol_loss`, `simsiam_loss`, `barlow_twins_loss` (terms: `barlow_twins_loss_terms`), `vicreg_loss` (-> `VICRegLossTerms`)
- self-distillation: `dino_loss` (= `crop_pair_cross_entropy` of `centred_teacher_targets`), `update_dino_center`, `teacher_temperature_schedule`; DINOv2's terms
  `sinkhorn_knopp_targets`, `masked_patch_loss` (iBOT, weights from `masked_patch_weights`), `koleo_loss`
- image-text: `clip_loss`, `siglip_loss`
- distillation from a frozen teacher: `queue_distillation_loss`, `patch_similarity_distillation_loss`

Batch-level terms cover every process's rows when a process group runs (``gather_distributed``).
"""

from .contrastive import info_nce_loss
from .dino import centred_teacher_targets, crop_pair_cross_entropy, dino_loss, teacher_temperature_schedule, update_dino_center
from .dinov2 import koleo_loss, masked_patch_loss, masked_patch_weights, sinkhorn_knopp_targets
from .distillation import patch_similarity_distillation_loss, queue_distillation_loss
from .image_text import clip_loss, siglip_loss
from .joint_embedding import (
    BarlowTwinsLossTerms,
    VICRegLossTerms,
    barlow_twins_loss,
    barlow_twins_loss_terms,
    byol_loss,
    moco_v3_loss,
    nt_xent_loss,
    simsiam_loss,
    vicreg_loss,
)
from .masked_modeling import masked_token_cross_entropy
from .reconstruction import masked_l1_loss

__all__ = [
    "BarlowTwinsLossTerms",
    "VICRegLossTerms",
    "barlow_twins_loss",
    "barlow_twins_loss_terms",
    "byol_loss",
    "centred_teacher_targets",
    "clip_loss",
    "crop_pair_cross_entropy",
    "dino_loss",
    "info_nce_loss",
    "koleo_loss",
    "masked_l1_loss",
    "masked_patch_loss",
    "masked_patch_weights",
    "masked_token_cross_entropy",
    "moco_v3_loss",
    "nt_xent_loss",
    "patch_similarity_distillation_loss",
    "queue_distillation_loss",
    "siglip_loss",
    "sinkhorn_knopp_targets",
    "simsiam_loss",
    "teacher_temperature_schedule",
    "update_dino_center",
    "vicreg_loss",
]
