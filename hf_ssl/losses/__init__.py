"""Losses as plain functions on tensors, usable without any hf-ssl model."""

from .contrastive import info_nce_loss
from .masked_modeling import masked_token_cross_entropy
from .reconstruction import masked_l1_loss

__all__ = ["info_nce_loss", "masked_l1_loss", "masked_token_cross_entropy"]
