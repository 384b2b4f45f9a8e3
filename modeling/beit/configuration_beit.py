"""Configuration of BEiT pre-training with patch-tokenizer targets.

BEiT: Bao et al. 2021, "BEiT: BERT Pre-Training of Image Transformers", arXiv:2106.08254; the
targets are the k-means patch tokens of the SplitMask paper (El-Nouby et al. 2021,
arXiv:2112.10740) instead of BEiT's dVAE.
"""

from __future__ import annotations

from hf_ssl.config_checks import require
from hf_ssl.masking import beit_num_masked_patches
from hf_ssl.token_prediction import PatchTokenConfig

MASK_STRATEGIES = ("blockwise", "random")
# What configs saved while BEiT was an objective of SplitMask carry besides BEiT's own fields.
SPLITMASK_ONLY_FIELDS = (
    "objective", "use_mim_loss", "use_contrastive_loss", "contrastive_temperature", "contrastive_loss_weight",
    "use_projection_head", "projection_dim", "gather_negatives_across_processes", "decoder_hidden_size",
    "decoder_num_hidden_layers", "decoder_num_attention_heads", "decoder_intermediate_size",
)


class BEiTConfig(PatchTokenConfig):
    r"""Configuration of [`ViTForBEiT`]: a ViT encoder (exported as a plain `ViTModel` or `BeitModel`)
    that sees every patch, a mask token at the hidden ones, and a linear classifier that predicts
    their patch-tokenizer tokens. The loss is ``mim_loss_weight * MIM``.

    The mask size is the paper's nominal ratio, `mask_ratio=0.4`, not the official count: the
    official recipe hides ``--num_mask_patches 75`` of the 196 patches of a 224-px image (0.383),
    and `num_masked_patches` turns the ratio into that count (75 at 0.4 on 14x14, scaled to other
    grids and ratios), so one field works at every resolution and the recipe's count stays exact.

    Args:
        image_size ... use_relative_position_bias, tokenizer_vocab_size ... tokenizer_fingerprint,
        mim_loss_weight: the encoder, tokenizer and loss-weight fields of `PatchTokenConfig`.
        mask_ratio (`float`, defaults to 0.4): fraction of hidden patches (see above).
        mask_strategy (`"blockwise"` or `"random"`, defaults to `"blockwise"`): BEiT's mask shape.
    """

    model_type = "hf-ssl-beit"

    mask_ratio: float = 0.4
    mask_strategy: str = "blockwise"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check_fields()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Load a saved config, also one saved while BEiT was SplitMask's ``objective="beit"`` (its
        SplitMask-only fields are dropped; a decoder, which BEiT has not, cannot be loaded)."""
        if config_dict.get("decoder_num_hidden_layers", 0) and config_dict.get("objective") == "beit":
            raise ValueError(
                "This BEiT checkpoint has a decoder (decoder_num_hidden_layers="
                f"{config_dict['decoder_num_hidden_layers']}), which BEiT has not: it was trained as SplitMask's "
                "objective='beit' with a decoder, a setting hf-ssl no longer builds"
            )
        config_dict = {key: value for key, value in config_dict.items() if key not in SPLITMASK_ONLY_FIELDS}
        return super().from_dict(config_dict, **kwargs)

    def check_fields(self) -> None:
        """Raise a ValueError naming the first invalid field and what it allows."""
        self.check_shared_fields()
        require(self, self.mask_strategy in MASK_STRATEGIES,
                f"mask_strategy must be one of {MASK_STRATEGIES}, got {self.mask_strategy!r}")
        require(self, 0.0 < self.mask_ratio < 1.0, f"mask_ratio must be in (0, 1), got {self.mask_ratio}")

    @property
    def num_masked_patches(self) -> int:
        """Patches a mask hides: 75 of 196 at ratio 0.4 on a 14x14 grid (the official
        ``--num_mask_patches 75``), scaled to other grids and ratios (`hf_ssl.masking.beit_num_masked_patches`)."""
        return beit_num_masked_patches(self.grid_size, self.mask_ratio)


__all__ = ["BEiTConfig"]
