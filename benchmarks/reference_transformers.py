"""transformers' own classes as references: BEiT, SimMIM (ViT / Swin), ViTMAE and the vision-text dual encoder.

Each builder takes the case's `CaseInputs` (the hf-ssl config it copies its sizes from, the shared
batch) and returns a `ModelStep`. Masks are drawn inside every step on the host, as the hf-ssl
models draw theirs, and moved with the batch. transformers' BEiT takes its target tokens as
``labels`` (a dVAE outside the model computes them in the BEiT recipe): random token ids stand in,
so the reference does not pay for targets while hf-ssl's BEiT / SplitMask compute theirs (the
patch tokenizer) inside the step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from steps import ModelStep
from transformers import (
    BeitConfig,
    BeitForMaskedImageModeling,
    BertConfig,
    SwinForMaskedImageModeling,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
    ViTConfig,
    ViTForMaskedImageModeling,
    ViTMAEConfig,
    ViTMAEForPreTraining,
)

from hf_ssl.backbones import preset_config
from hf_ssl.masking import beit_mask
from hf_ssl.masking.blockwise import BEIT_MASK_RATIO
from hf_ssl.masking.simmim import SimMIMMaskGenerator
from hf_ssl.recipes import parameter_groups

if TYPE_CHECKING:
    from cases import CaseInputs

# The dual encoder's text side without an hf-ssl config to copy: BERT-mini (4 layers, 256 wide,
# google/bert_uncased_L-4_H-256_A-4's shape), 32-token captions, CLIP's 512-d joint space.
TEXT_ENCODER = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024,
                "max_position_embeddings": 64}
TEXT_VOCABULARY_SIZE = 8192
CAPTION_LENGTH = 32
PROJECTION_DIM = 512
_VIT_FIELDS = ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "hidden_act", "layer_norm_eps", "initializer_range")
# How a BEiT encoder places its tokens and scales its residual branches: hf-ssl's BEiT and SplitMask
# pre-train with BEiT's shared relative position bias (a learned attention bias in every block) and
# no absolute positions, which `BeitConfig`'s defaults (no position information at all) leave out.
_BEIT_POSITION_FIELDS = ("use_absolute_position_embeddings", "use_relative_position_bias",
                         "use_shared_relative_position_bias", "layer_scale_init_value", "drop_path_rate")


def _model_step(model: torch.nn.Module, loss, inputs: CaseInputs, note: str) -> ModelStep:
    return ModelStep(module=model, loss=loss, parameter_groups=parameter_groups(model, inputs.optimizer.weight_decay),
                     note=note)


def transformers_beit(inputs: CaseInputs) -> ModelStep:
    """`BeitForMaskedImageModeling` at the hf-ssl encoder's size and position settings: BEiT's block-wise
    40 % mask, vocabulary of the hf-ssl tokenizer's size, random target tokens."""
    config = inputs.hf_ssl_config
    vocabulary_size = config.tokenizer_vocab_size
    model = BeitForMaskedImageModeling(BeitConfig(
        vocab_size=vocabulary_size, use_mask_token=True,
        **{name: getattr(config, name) for name in (*_VIT_FIELDS, *_BEIT_POSITION_FIELDS)},
    ))
    grid = (config.image_size // config.patch_size, config.image_size // config.patch_size)

    def loss(runner, batch):
        pixel_values = batch["pixel_values"]
        mask = beit_mask("blockwise", pixel_values.shape[0], grid, BEIT_MASK_RATIO)  # (B, N) on the host
        labels = torch.randint(0, vocabulary_size, (int(mask.sum()),))
        return runner(pixel_values=pixel_values, bool_masked_pos=mask.to(pixel_values.device, non_blocking=True),
                      labels=labels.to(pixel_values.device, non_blocking=True)).loss

    return _model_step(model, loss, inputs, f"BEiT, vocabulary {vocabulary_size}, block-wise mask {BEIT_MASK_RATIO}")


def transformers_simmim(inputs: CaseInputs) -> ModelStep:
    """`ViTForMaskedImageModeling` / `SwinForMaskedImageModeling` on the hf-ssl SimMIM encoder config,
    masked with the SimMIM generator hf-ssl uses (transformers' classes take a mask, never draw one)."""
    config = inputs.hf_ssl_config
    encoder_config = config.encoder_config()
    if encoder_config.model_type == "beit":
        # hf-ssl's SimMIM-ViT at 224 px is BEiT's ViT (relative position bias, layer scale), as in the
        # official code; transformers' SimMIM class for ViTs takes a plain ViT of the same size.
        encoder_config = ViTConfig(**{name: getattr(encoder_config, name) for name in (
            "image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "layer_norm_eps")}, encoder_stride=encoder_config.patch_size)
    model_class = SwinForMaskedImageModeling if config.backbone == "swin" else ViTForMaskedImageModeling
    model = model_class(encoder_config)
    mask_generator = SimMIMMaskGenerator(config.image_size, config.patch_size, config.mask_patch_size, config.mask_ratio,
                                         config.mask_strategy)

    def loss(runner, batch):
        pixel_values = batch["pixel_values"]
        mask = mask_generator(pixel_values.shape[0])  # (B, N) on the host
        return runner(pixel_values=pixel_values, bool_masked_pos=mask.to(pixel_values.device, non_blocking=True)).loss

    return _model_step(model, loss, inputs, f"{model_class.__name__}, mask {config.mask_ratio} of {config.mask_patch_size}-px patches")


def transformers_mae(inputs: CaseInputs) -> ModelStep:
    """`ViTMAEForPreTraining` with every field of the hf-ssl MAE config (it draws its own noise)."""
    fields = {key: value for key, value in inputs.hf_ssl_config.to_diff_dict().items()
              if key not in ("model_type", "architectures", "transformers_version")}
    model = ViTMAEForPreTraining(ViTMAEConfig(**fields))
    return _model_step(model, lambda runner, batch: runner(pixel_values=batch["pixel_values"]).loss, inputs,
                       f"ViTMAEForPreTraining, mask ratio {model.config.mask_ratio}")


def transformers_dual_encoder(inputs: CaseInputs) -> ModelStep:
    """`VisionTextDualEncoderModel` (ViT of the size + a BERT text encoder) with its own CLIP loss (``return_loss=True``)."""
    vision_config = preset_config(inputs.size.model, inputs.image_size)
    text_config = inputs.config_value("text_config", None)
    if isinstance(text_config, dict):
        text_config = BertConfig(**{key: value for key, value in text_config.items() if key != "model_type"})
    text_config = text_config or BertConfig(vocab_size=TEXT_VOCABULARY_SIZE, **TEXT_ENCODER)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision_config, text_config, projection_dim=inputs.config_value("projection_dim", PROJECTION_DIM)
    )
    model = VisionTextDualEncoderModel(config=config)

    def loss(runner, batch):
        return runner(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                      pixel_values=batch["pixel_values"], return_loss=True).loss

    return _model_step(model, loss, inputs, f"ViT + BERT ({text_config.num_hidden_layers} layers, {text_config.hidden_size} wide)")


__all__ = [
    "CAPTION_LENGTH",
    "TEXT_ENCODER",
    "TEXT_VOCABULARY_SIZE",
    "transformers_beit",
    "transformers_dual_encoder",
    "transformers_mae",
    "transformers_simmim",
]
