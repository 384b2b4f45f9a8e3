"""A CLIP-style image-text dual encoder (`BackboneForDualEncoder`) on any vision backbone.

CLIP: Radford et al. 2021, arXiv:2103.00020 (Figure 3):

    I_e = l2_normalize(image_encoder(I) W_i)       T_e = l2_normalize(text_encoder(T) W_t)
    logits = I_e T_e^T * exp(t)                     loss = (CE(logits, rows) + CE(logits^T, rows)) / 2

with t learned, initialised at log(1 / 0.07), exp(t) clipped at 100. SigLIP (Zhai et al. 2023,
arXiv:2303.15343) replaces the softmax by a sigmoid per pair with a learned bias; LiT (Zhai et al.
2022, arXiv:2111.07991) locks a pre-trained image tower and trains the text side to match it.

Why not a subclass of transformers' `VisionTextDualEncoderModel`: its constructor reads
``vision_config.hidden_size`` (ConvNeXt, ResNet and timm configs have none) and builds the vision
tower with transformers' tanh pooler, whose image feature on a ViT is ``tanh(W cls)``: a layer that
hf-ssl's pre-trained encoders do not have, so LiT would freeze it at its random init. A subclass
would override every method but ``get_text_features``. This model keeps its parameter names
(``vision_model``, ``text_model``, ``visual_projection``, ``text_projection``, ``logit_scale``), its
``get_image_features`` / ``get_text_features`` and CLIP's output fields (``logits_per_image`` ...),
so code and pipelines written for it work here, and `to_vision_text_dual_encoder` returns the
plain transformers model computing the same embeddings (ViT-family and other towers whose pooled
output the plain class reproduces) for use without hf-ssl.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel, VisionTextDualEncoderConfig, VisionTextDualEncoderModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from hf_ssl.backbones.contract import BackboneContractMixin
from hf_ssl.backbones.modules import (
    CLS_TOKEN_MODEL_TYPES,
    build_backbone,
    feature_dimension,
    is_timm_module,
    pooled_features,
)
from hf_ssl.backbones.spec import config_from_dict
from hf_ssl.losses.image_text import clip_loss, siglip_loss
from hf_ssl.monitoring import collapse_metrics

from .configuration_dual_encoder import DualEncoderConfig


@dataclass
class DualEncoderOutput(ModelOutput):
    """Output of [`BackboneForDualEncoder`]; the fields of transformers' `CLIPOutput` plus the
    scalars the training loop logs.

    Args:
        loss: the CLIP or SigLIP loss (None when the batch is not paired or ``return_loss=False``).
        logits_per_image: ``(B, M)`` image-text scores (exp(t) cos, plus b for SigLIP).
        logits_per_text: ``(M, B)``, the transpose.
        text_embeds: ``(M, P)`` L2-normalised text embeddings.
        image_embeds: ``(B, P)`` L2-normalised image embeddings.
        logit_scale: the multiplier exp(t) in use (clamped), 0-dim.
        logit_bias: SigLIP's b, 0-dim (None for softmax).
        embedding_std, embedding_rank: collapse monitors of the image embeddings (with a loss).
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    logit_scale: torch.FloatTensor | None = None
    logit_bias: torch.FloatTensor | None = None
    embedding_std: torch.FloatTensor | None = None
    embedding_rank: torch.FloatTensor | None = None


class BackboneForDualEncoder(BackboneContractMixin, PreTrainedModel):
    """Image tower (any hf-ssl backbone) + text tower (any transformers text model), linear
    projections into a joint space, a learned logit scale (and SigLIP bias).

    ``forward(pixel_values (B, C, H, W), input_ids (M, L), attention_mask (M, L)) -> DualEncoderOutput``.
    The loss is computed by default whenever the batch is paired (M == B, row i of the text
    describes image i), over the global batch when several processes train.
    """

    config: DualEncoderConfig
    config_class = DualEncoderConfig
    base_model_prefix = "dual_encoder"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    _supports_sdpa = True

    def __init__(self, config: DualEncoderConfig):
        super().__init__(config)
        if not config.backbone_config:
            raise ValueError("DualEncoderConfig.backbone_config is empty: give the image tower's nested config "
                             "(hf_ssl.resolve_backbone(name, image_size).nested())")
        self.vision_model = build_backbone(config.backbone_config)
        self.text_model = AutoModel.from_config(config.text_config)
        # As in VisionTextDualEncoderModel: the text tower reads the composite config's text section.
        config.text_config._attn_implementation = self.text_model.config._attn_implementation
        self.text_model.config = config.text_config
        self.vision_embed_dim = feature_dimension(self.vision_model)
        self.text_embed_dim = int(config.text_config.hidden_size)
        self.visual_projection = nn.Linear(self.vision_embed_dim, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        if config.loss_type == "sigmoid":
            self.logit_bias = nn.Parameter(torch.tensor(float(config.logit_bias_init_value)))
        else:
            self.register_parameter("logit_bias", None)
        self.post_init()
        self.set_image_tower_lock(config.lock_image_tower, config.unlock_image_projection)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise the projections and logit parameters only: each tower initialises itself
        (timm / transformers), and a pre-trained tower must never be re-initialised.

        Projections: normal with std width^-0.5, as CLIP and transformers' CLIPModel.
        """
        if module is self:
            init.constant_(self.logit_scale, float(self.config.logit_scale_init_value))
            if self.logit_bias is not None:
                init.constant_(self.logit_bias, float(self.config.logit_bias_init_value))
        elif module is self.visual_projection:
            init.normal_(module.weight, std=self.vision_embed_dim**-0.5)
        elif module is self.text_projection:
            init.normal_(module.weight, std=self.text_embed_dim**-0.5)

    # ----- backbone contract and LiT locking ------------------------------------------------

    def get_backbone(self) -> nn.Module:
        """The image tower: the plain transformers / timm encoder (weights shared)."""
        return self.vision_model

    def set_image_tower_lock(self, lock: bool = True, unlock_projection: bool = False) -> None:
        """LiT: freeze the image tower (no gradient, eval mode: dropout off, batch-norm statistics
        fixed) and, unless `unlock_projection`, its projection; ``lock=False`` trains everything.
        Recorded in the config, so a saved model keeps its lock."""
        if unlock_projection and not lock:
            raise ValueError("unlock_projection needs lock=True (without a lock every parameter trains)")
        self.config.lock_image_tower = bool(lock)
        self.config.unlock_image_projection = bool(unlock_projection)
        self.vision_model.requires_grad_(not lock)
        self.visual_projection.requires_grad_(not lock or unlock_projection)
        self.train(self.training)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then the saved LiT lock again (loading replaces the
        parameters, which resets their ``requires_grad``)."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.set_image_tower_lock(model.config.lock_image_tower, model.config.unlock_image_projection)
        return loaded

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.lock_image_tower:
            self.vision_model.eval()
        return self

    # ----- features -------------------------------------------------------------------------

    def get_image_features(self, pixel_values: torch.Tensor) -> BaseModelOutputWithPooling:
        """Projected image features (not normalised), as transformers' dual encoders return them.

        Args:
            pixel_values: ``(B, C, H, W)``.

        Returns:
            ``pooler_output`` ``(B, P)``: the tower's pooled feature (the CLS token after the final
            norm for ViTs, the model's pooling otherwise) times the image projection.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.lock_image_tower):
            pooled = self._pooled_image_features(pixel_values)  # (B, D_image)
        return BaseModelOutputWithPooling(pooler_output=self.visual_projection(pooled))

    def _pooled_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """hf-ssl's pooled feature of the tower, ``(B, C, H, W) -> (B, D)``.

        hf-ssl builds towers without their pooler (``add_pooling_layer=False``); for Swin-like
        encoders that pooler is a parameter-free average over the final (normalised) tokens, which
        is recomputed here, so that the feature is the one transformers' own model would pool.
        """
        tower = self.vision_model
        if not is_timm_module(tower) and tower.config.model_type not in CLS_TOKEN_MODEL_TYPES \
                and getattr(tower, "pooler", "no pooler attribute") is None:
            return tower(pixel_values=pixel_values).last_hidden_state.mean(dim=1)  # (B, T, D) -> (B, D)
        return pooled_features(tower, pixel_values)

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPooling:
        """Projected text features (not normalised).

        Args:
            input_ids, attention_mask, token_type_ids, position_ids: ``(M, L)``, as the text tower takes them.

        Returns:
            ``last_hidden_state`` ``(M, L, D_text)`` of the tower and ``pooler_output`` ``(M, P)``:
            the tower's pooled output (BERT: its pooler on [CLS]; towers without one: the first
            token) times the text projection.
        """
        if attention_mask is not None and attention_mask.shape[1] > 1 and not torch.compiler.is_compiling():
            # Captions arrive padded to a fixed length; trailing columns that are padding in every
            # row change nothing under the attention mask, so they are cut (short captions run
            # several times faster). Left-padded batches have no such columns. A compiled model
            # keeps the fixed length: one graph, and no read of the mask from the device.
            length = int(attention_mask.any(dim=0).nonzero().max()) + 1 if attention_mask.any() else 1
            input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
            token_type_ids = None if token_type_ids is None else token_type_ids[:, :length]
            position_ids = None if position_ids is None else position_ids[:, :length]
        optional = {"attention_mask": attention_mask, "token_type_ids": token_type_ids, "position_ids": position_ids}
        outputs = self.text_model(input_ids=input_ids, **{name: value for name, value in optional.items() if value is not None})
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is None:
            pooled = outputs.last_hidden_state[:, 0]  # (M, D_text)
        return BaseModelOutputWithPooling(last_hidden_state=outputs.last_hidden_state, pooler_output=self.text_projection(pooled))

    def current_logit_scale(self) -> torch.Tensor:
        """exp(t), clamped at `config.max_logit_scale` (0-dim, differentiable below the clamp)."""
        return self.logit_scale.clamp(max=math.log(self.config.max_logit_scale)).exp()

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep t in [0, log(max_logit_scale)] in place, after each optimizer step (open_clip's train loop)."""
        self.logit_scale.clamp_(0.0, math.log(self.config.max_logit_scale))

    # ----- forward --------------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        return_dict: bool | None = None,
    ) -> DualEncoderOutput:
        """Score every image against every text; the loss when the batch is paired.

        Args:
            pixel_values: ``(B, C, H, W)``.
            input_ids, attention_mask, token_type_ids, position_ids: ``(M, L)``.
            return_loss: None (default) computes the loss whenever M == B (a training batch, row i
                of the text describing image i) and not otherwise (zero-shot: one image, several
                labels); True requires a paired batch; False never computes it.
            return_dict: False returns a tuple.
        """
        if pixel_values is None or input_ids is None:
            raise ValueError("forward needs pixel_values and input_ids; use get_image_features / get_text_features "
                             "for one modality")
        image_embeds = F.normalize(self.get_image_features(pixel_values).pooler_output, dim=-1)  # (B, P)
        text_embeds = F.normalize(
            self.get_text_features(input_ids, attention_mask, token_type_ids, position_ids).pooler_output, dim=-1
        )  # (M, P)
        logit_scale = self.current_logit_scale()
        logits_per_text = logit_scale * text_embeds @ image_embeds.T  # (M, B)
        if self.logit_bias is not None:
            logits_per_text = logits_per_text + self.logit_bias
        paired = image_embeds.shape[0] == text_embeds.shape[0]
        if return_loss and not paired:
            raise ValueError(f"return_loss=True needs one text per image, got {image_embeds.shape[0]} images and "
                             f"{text_embeds.shape[0]} texts")
        loss, monitors = None, {}
        if return_loss or (return_loss is None and paired):
            if self.config.loss_type == "sigmoid":
                loss = siglip_loss(image_embeds, text_embeds, logit_scale, self.logit_bias,
                                   gather_distributed=self.config.gather_distributed)
            else:
                loss = clip_loss(image_embeds, text_embeds, logit_scale, gather_distributed=self.config.gather_distributed)
            if image_embeds.shape[0] >= 2:
                monitors = collapse_metrics(image_embeds.detach())
        output = DualEncoderOutput(
            loss=loss,
            logits_per_image=logits_per_text.T,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            logit_scale=logit_scale.detach(),
            logit_bias=None if self.logit_bias is None else self.logit_bias.detach(),
            **monitors,
        )
        return output if return_dict is not False else output.to_tuple()

    # ----- plain transformers form ----------------------------------------------------------

    @torch.no_grad()
    def to_vision_text_dual_encoder(self) -> VisionTextDualEncoderModel:
        """This model as transformers' own `VisionTextDualEncoderModel` (loads without hf-ssl).

        Same weights and embeddings: a ViT tower gets a pooler that is the identity on the CLS
        token (linear activation, identity weight), the feature this model projects; a SigLIP
        model loses its bias, which shifts every logit equally (rankings, softmax over labels and
        retrieval are unchanged). The logit scale written is the clamped exp(t).

        Raises:
            ValueError: the image tower has no equivalent there (timm towers, encoders whose plain
                pooled output differs from this model's image feature).
        """
        if is_timm_module(self.vision_model):
            raise ValueError("a timm image tower has no VisionTextDualEncoderModel form (it builds transformers towers)")
        vision_config = config_from_dict(self.config.backbone_config)
        vision_state = {f"vision_model.{name}": tensor for name, tensor in self.vision_model.state_dict().items()}
        if vision_config.model_type == "vit":
            vision_config.pooler_act = "linear"
            vision_config.pooler_output_size = vision_config.hidden_size
            vision_state["vision_model.pooler.dense.weight"] = torch.eye(vision_config.hidden_size)
            vision_state["vision_model.pooler.dense.bias"] = torch.zeros(vision_config.hidden_size)
        plain_config = VisionTextDualEncoderConfig(
            vision_config=vision_config.to_dict(),
            text_config=self.config.text_config.to_dict(),
            projection_dim=self.config.projection_dim,
            logit_scale_init_value=float(self.logit_scale.clamp(max=math.log(self.config.max_logit_scale))),
        )
        try:
            plain = VisionTextDualEncoderModel(plain_config)
        except AttributeError as error:  # e.g. no vision_config.hidden_size (ConvNeXt, ResNet)
            raise ValueError(f"VisionTextDualEncoderModel cannot hold a {vision_config.model_type} tower ({error})") from error
        state = {
            **vision_state,
            **{f"text_model.{name}": tensor for name, tensor in self.text_model.state_dict().items()},
            "visual_projection.weight": self.visual_projection.weight,
            "text_projection.weight": self.text_projection.weight,
            "logit_scale": self.logit_scale.clamp(max=math.log(self.config.max_logit_scale)),
        }
        try:
            plain.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(f"VisionTextDualEncoderModel's {vision_config.model_type} tower has other weights: "
                             f"{str(error).splitlines()[0]}") from error
        plain.to(self.logit_scale.device).eval()
        size = int(self.config.image_size)
        probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(self.logit_scale.device)
        was_training = self.training
        self.eval()
        expected = self.get_image_features(probe).pooler_output
        self.train(was_training)
        got = plain.get_image_features(probe).pooler_output
        if got is None or got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
            raise ValueError(f"VisionTextDualEncoderModel pools a {vision_config.model_type} tower differently from "
                             "this model; it has no plain form")
        return plain


__all__ = ["BackboneForDualEncoder", "DualEncoderOutput"]
