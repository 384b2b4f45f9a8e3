"""DINO's projection head and its first-epoch last-layer freeze.

DINO, Caron et al. 2021, arXiv:2104.14294; follows facebookresearch/dino vision_transformer.py
``DINOHead`` and utils.py ``cancel_gradients_last_layer``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from hf_ssl.heads.projection import ProjectionHead


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised linear layer onto K prototypes.

    ``mlp`` is ``num_layers`` linear layers (GELU between them, hidden width 2048) ending at the
    bottleneck (256), initialised with trunc_normal(std 0.02) and zero biases; ``last_layer`` is
    ``Linear(bottleneck_dim, output_dim, bias=False)`` under weight normalisation
    (``w_k = g_k v_k / ||v_k||``, PyTorch's default init for v, gain g = 1). With
    ``norm_last_layer=True`` the gain stays frozen at 1, so every output is the cosine between the
    bottleneck feature and a prototype; the paper's ViT-S runs unfreeze it (``False``) for
    better accuracy at some risk of instability, ViT-B keeps it frozen. The official teacher
    head always uses ``True``.

    State-dict keys: ``mlp.{0,2,4}.{weight,bias}`` (with ``batch_norm``, BatchNorm layers shift
    the indices and the linear layers before them have no bias),
    ``last_layer.parametrizations.weight.original0`` (g, ``(K, 1)``) and ``...original1``
    (v, ``(K, bottleneck_dim)``). Official DINO checkpoints (``last_layer.weight_g`` /
    ``weight_v``) load with ``strict=True``: torch's weight-norm parametrisation converts them.

    Args:
        input_dim: size of the backbone feature (ViT-S 384, ViT-B 768, ResNet-50 2048).
        output_dim: K, the number of prototypes (paper: 65536).
        hidden_dim: width of the hidden MLP layers (paper: 2048).
        bottleneck_dim: size of the normalised bottleneck (paper: 256).
        num_layers: linear layers in ``mlp``, >= 1 (paper: 3).
        batch_norm: BatchNorm1d after the hidden layers (official ``--use_bn_in_head``, default off).
        norm_last_layer: freeze the weight-norm gain at 1 (official default: True).
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        batch_norm: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        self.mlp = ProjectionHead(
            input_dim, hidden_dim, bottleneck_dim, num_layers, hidden_batch_norm=batch_norm, activation="gelu"
        )
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, output_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)
        self.norm_last_layer = norm_last_layer

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Prototype scores.

        Args:
            features: ``(B, input_dim)`` backbone features (e.g. the CLS token).

        Returns:
            ``(B, output_dim)``; in [-1, 1] when ``norm_last_layer``.
        """
        bottleneck = F.normalize(self.mlp(features), dim=-1)  # (B, bottleneck_dim)
        return self.last_layer(bottleneck)


def cancel_last_layer_gradients(module: nn.Module) -> None:
    """Drop the gradients of the prototype layer of every `DINOHead` inside `module`.

    Call it between ``backward()`` and ``optimizer.step()`` during the first epoch (official
    ``--freeze_last_layer 1``): the prototypes then stay fixed while the rest of the student
    settles, which the DINO authors found to help training. With ``grad = None`` the
    optimizer skips those parameters entirely (no update, no weight decay).

    Args:
        module: a `DINOHead` or any module containing one (a student model, a DDP wrapper).

    Raises:
        ValueError: when `module` contains no `DINOHead`.
    """
    heads = [submodule for submodule in module.modules() if isinstance(submodule, DINOHead)]
    if not heads:
        raise ValueError(f"module must contain a DINOHead; {type(module).__name__} has none")
    for head in heads:
        for parameter in head.last_layer.parameters():
            parameter.grad = None
