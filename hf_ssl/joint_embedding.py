"""What the two-view joint-embedding models share: SimCLR, MoCo v3, BYOL, SimSiam, Barlow Twins, VICReg.

Each method's modeling package (``hf_ssl.modeling.<method>``) subclasses these; the methods never
import each other. A model takes ``pixel_values`` ``(B, 2, C, H, W)`` (two augmented views of each
image, `hf_ssl.transforms.two_views`) and encodes both views in ONE backbone call on a ``(2B, C,
H, W)`` batch (view-major: the B first views, then the B second views), so that the backbone runs
at twice the batch instead of twice. The projection / prediction heads then run on each view
separately.

Batch-norm statistics: the official codes of MoCo v3, BYOL, SimSiam, Barlow Twins and VICReg call
their networks once per view, so every batch norm (backbone and heads) normalises one view's
batch; SimCLR's official code concatenates the views and normalises over both. Here the heads
keep the official per-view statistics (SimCLR's projector runs on both views at once, as its
code does). A backbone with batch norm (ResNet, ConvNeXt has none) normalises over both views
together in the single backbone call, i.e. SimCLR's semantics for every method; ViTs have no
batch norm and compute exactly what two calls would. Batch norm is per process (the official
recipes use SyncBatchNorm over the global batch).

Momentum encoders (MoCo v3's key encoder, BYOL's target network) are submodules that receive no
gradient; `MomentumJointEmbeddingModel.update_momentum_encoder` moves them by EMA after every
optimizer step (`hf_ssl.ema.update_ema`), with the recipe's ``ema_momentum`` schedule.
"""

from __future__ import annotations

import copy
from dataclasses import field

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from hf_ssl.backbones.contract import BackboneContractMixin
from hf_ssl.backbones.modules import VisionBackbone, build_backbone, copy_backbone_weights
from hf_ssl.config_checks import require, require_positive_ints
from hf_ssl.ema import update_ema
from hf_ssl.heads import PredictionHead, ProjectionHead
from hf_ssl.monitoring import collapse_metrics


class JointEmbeddingConfig(PreTrainedConfig):
    r"""Fields every two-view joint-embedding config shares; each method subclasses it with its
    `model_type`, its published head sizes and its loss settings.

    Args:
        backbone_config (`dict`): the backbone's nested config (`hf_ssl.backbones.BackboneSpec.nested()`),
            from which the model rebuilds the backbone offline.
        image_size (`int`, defaults to 224): input side the model was built for (the exported
            image processor's size).
        projection_hidden_size (`int`): width of the projector's hidden layers.
        projection_dim (`int`): size of the projector's output (the embedding the loss sees).
        projection_num_layers (`int`): linear layers of the projector (>= 1).
        projection_output_batch_norm (`bool`): batch norm without affine after the projector's last layer.
        projection_bias (`bool`): bias of the projector's linear layers not followed by batch norm.
        freeze_patch_embedding (`bool`, defaults to `False`): keep the backbone's patch projection at
            its random initialisation (MoCo v3's ``--stop-grad-conv1``, which stabilises ViT
            training); needs a backbone with a patch embedding (ViT, Swin, timm ViTs).
    """

    backbone_config: dict = field(default_factory=dict)
    image_size: int = 224
    projection_hidden_size: int = 2048
    projection_dim: int = 128
    projection_num_layers: int = 2
    projection_output_batch_norm: bool = False
    projection_bias: bool = True
    freeze_patch_embedding: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check_fields()

    def require(self, condition: bool, message: str) -> None:
        """Raise a ValueError prefixed with the config class name when `condition` is false."""
        require(self, condition, message)

    def check_fields(self) -> None:
        """Raise a ValueError naming the first invalid field and what it allows."""
        self.require(isinstance(self.backbone_config, dict), f"backbone_config must be a dict, got {type(self.backbone_config).__name__}")
        require_positive_ints(self, ("image_size", "projection_hidden_size", "projection_dim", "projection_num_layers"))


class JointEmbeddingWithPredictorConfig(JointEmbeddingConfig):
    r"""A `JointEmbeddingConfig` with a 2-layer predictor on top of the projector (MoCo v3, BYOL, SimSiam).

    Args:
        prediction_hidden_size (`int`): width of the predictor's hidden layer.
        prediction_output_batch_norm (`bool`): batch norm without affine after the predictor (MoCo v3 ViT).
        prediction_bias (`bool`): bias of the predictor's last layer.
    """

    prediction_hidden_size: int = 4096
    prediction_output_batch_norm: bool = False
    prediction_bias: bool = True

    def check_fields(self) -> None:
        super().check_fields()
        require_positive_ints(self, ("prediction_hidden_size",))


def find_patch_embedding(module: nn.Module) -> nn.Module | None:
    """The patch-embedding submodule of a ViT-style backbone (transformers ``embeddings.patch_embeddings``,
    timm ``patch_embed``); None for backbones without one (CNNs)."""
    embeddings = getattr(module, "embeddings", None)
    if embeddings is not None and isinstance(getattr(embeddings, "patch_embeddings", None), nn.Module):
        return embeddings.patch_embeddings
    timm_model = getattr(module, "timm_model", module)  # transformers' TimmWrapperModel holds the timm module
    patch_embed = getattr(timm_model, "patch_embed", None)
    return patch_embed if isinstance(patch_embed, nn.Module) else None


def is_vision_transformer(nested_config: dict) -> bool:
    """Whether the backbone described by `nested_config` is a transformer on patches (ViT, DeiT, Swin,
    DINOv2, timm ViTs): it has a patch embedding and attention layers. ConvNeXt's patchify stem is
    a patch embedding without attention, a CNN here. Built on the meta device: no memory, no time."""
    with torch.device("meta"):
        module = build_backbone(nested_config)
    has_attention = any("Attention" in type(submodule).__name__ for submodule in module.modules())
    return has_attention and find_patch_embedding(module) is not None


def check_two_views(pixel_values: torch.Tensor) -> None:
    """Raise a ValueError unless `pixel_values` is ``(B >= 2, 2, C, H, W)``."""
    if pixel_values.dim() != 5 or pixel_values.shape[1] != 2 or pixel_values.shape[0] < 2:
        raise ValueError(
            "pixel_values must be (B, 2, C, H, W): two views of each of B >= 2 images (batch statistics need "
            f"two rows), got {tuple(pixel_values.shape)}"
        )


def encode_two_views(backbone: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Both views in one backbone call: ``(B, 2, C, H, W) -> (2, B, D)``; row ``[v, i]`` is view v of image i."""
    check_two_views(pixel_values)
    batch_size = pixel_values.shape[0]
    views = pixel_values.transpose(0, 1).flatten(0, 1)  # (2B, C, H, W): all first views, then all second views
    return backbone(views).view(2, batch_size, -1)  # (2, B, D)


def per_view(head: nn.Module, views: torch.Tensor) -> torch.Tensor:
    """Apply `head` as if to each view's batch separately: ``(V, B, D) -> (V, B, E)``.

    The result, and every batch norm's running statistics, are those of V separate calls (the
    official codes' per-view statistics), but the layers between the norms run once on all V * B
    rows: one matrix product per linear layer instead of V, and its weight gradient is formed
    once instead of V times and summed (with Barlow Twins' 8192 x 8192 layers, two 256 MiB
    additions per step). A `nn.Sequential` head is walked layer by layer, its batch norms called
    on each view's rows in view order; any other head is called once per view.
    """
    views_count, batch_size = views.shape[:2]
    if not isinstance(head, nn.Sequential):
        return torch.stack([head(view) for view in views])
    rows = views.reshape(views_count * batch_size, *views.shape[2:])  # view-major, as the backbone call
    for layer in head:
        if isinstance(layer, (nn.BatchNorm1d, nn.SyncBatchNorm)):
            rows = torch.cat([layer(view_rows) for view_rows in rows.split(batch_size)])
        else:
            rows = layer(rows)
    return rows.reshape(views_count, batch_size, *rows.shape[1:])


def build_projector(config: JointEmbeddingConfig, input_dim: int) -> ProjectionHead:
    """The projector a config describes, on features of size `input_dim`."""
    return ProjectionHead(
        input_dim,
        config.projection_hidden_size,
        config.projection_dim,
        num_layers=config.projection_num_layers,
        output_batch_norm=config.projection_output_batch_norm,
        bias=config.projection_bias,
    )


def build_predictor(config: JointEmbeddingWithPredictorConfig) -> PredictionHead:
    """The 2-layer predictor ``projection_dim -> prediction_hidden_size -> projection_dim``."""
    return PredictionHead(
        config.projection_dim,
        config.prediction_hidden_size,
        output_batch_norm=config.prediction_output_batch_norm,
        bias=config.prediction_bias,
    )


class JointEmbeddingModel(BackboneContractMixin, PreTrainedModel):
    """Backbone (`VisionBackbone`: any transformers / timm encoder, pooled) + projector.

    Subclasses set `config_class`, add their heads and define ``forward``.

    Attributes:
        backbone: `VisionBackbone`; ``backbone.model`` is the plain encoder (`get_backbone`).
        projector: `ProjectionHead` of the config's sizes.
    """

    config_class = JointEmbeddingConfig
    base_model_prefix = "joint_embedding"
    main_input_name = "pixel_values"

    def __init__(self, config: JointEmbeddingConfig):
        super().__init__(config)
        if not config.backbone_config:
            raise ValueError(f"{type(config).__name__}.backbone_config is empty: build the config from a backbone, "
                             "e.g. hf_ssl.resolve_backbone('vit-small', 224).nested()")
        self.backbone = VisionBackbone(config.backbone_config)
        if config.freeze_patch_embedding:
            patch_embedding = find_patch_embedding(self.backbone.model)
            if patch_embedding is None:
                raise ValueError(f"freeze_patch_embedding=True needs a backbone with a patch embedding (ViT, Swin); "
                                 f"{type(self.backbone.model).__name__} has none")
            patch_embedding.requires_grad_(False)
        self.projector = build_projector(config, self.backbone.feature_dimension)

    def _init_weights(self, module: nn.Module) -> None:
        """Keep every module's own initialisation: the backbone's (timm / transformers) and PyTorch's
        defaults for the heads, which the official PyTorch codes (MoCo v3, SimSiam, Barlow Twins,
        VICReg) use too."""

    def get_backbone(self) -> nn.Module:
        return self.backbone.model

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features of both views in one call: ``(B, 2, C, H, W) -> (2, B, D)``."""
        return encode_two_views(self.backbone, pixel_values)

    @staticmethod
    def collapse_metrics(features: torch.Tensor) -> dict[str, torch.Tensor]:
        """``embedding_std`` / ``embedding_rank`` of the backbone features of both views ``(2, B, D)``:
        the representation that is exported and evaluated."""
        return collapse_metrics(features.detach().flatten(0, 1))


class MomentumJointEmbeddingModel(JointEmbeddingModel):
    """Backbone + projector + predictor against a momentum copy of backbone + projector (MoCo v3, BYOL).

    The copy starts equal to the online network, never receives gradients (``requires_grad=False``,
    called under ``torch.no_grad``) and follows it by EMA (`update_momentum_encoder`). Its batch
    norms run in training mode with their own batch statistics, as in the official codes.

    Attributes:
        predictor: `PredictionHead` on the projector (online network only).
        momentum_backbone, momentum_projector: the momentum copy.
    """

    config_class = JointEmbeddingWithPredictorConfig

    def __init__(self, config: JointEmbeddingWithPredictorConfig):
        super().__init__(config)
        self.predictor = build_predictor(config)
        self.momentum_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.momentum_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def predict_with_momentum(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both networks on both views (one backbone call each, per-view heads).

        Args:
            pixel_values: ``(B, 2, C, H, W)``.

        Returns:
            ``(features (2, B, D), predictions (2, B, E), momentum_projections (2, B, E))``: the online
            backbone features, the online predictor outputs and the momentum network's projections
            (no gradient), view-major.
        """
        features = self.encode(pixel_values)  # (2, B, D)
        predictions = per_view(self.predictor, per_view(self.projector, features))  # (2, B, E)
        with torch.no_grad():
            momentum_projections = per_view(self.momentum_projector, encode_two_views(self.momentum_backbone, pixel_values))
        return features, predictions, momentum_projections

    @torch.no_grad()
    def update_momentum_encoder(self, momentum: float) -> None:
        """``momentum_net = momentum * momentum_net + (1 - momentum) * online_net`` (backbone + projector)."""
        update_ema(
            nn.ModuleList([self.momentum_backbone, self.momentum_projector]),
            nn.ModuleList([self.backbone, self.projector]),
            momentum,
        )

    def load_backbone_weights(self, pretrained_backbone: nn.Module) -> None:
        """Start both the online and the momentum backbone from a checkpoint's encoder."""
        super().load_backbone_weights(pretrained_backbone)
        copy_backbone_weights(self.momentum_backbone.model, self.backbone.model)


__all__ = [
    "JointEmbeddingConfig",
    "JointEmbeddingModel",
    "JointEmbeddingWithPredictorConfig",
    "MomentumJointEmbeddingModel",
    "build_predictor",
    "build_projector",
    "check_two_views",
    "encode_two_views",
    "find_patch_embedding",
    "is_vision_transformer",
    "per_view",
]
