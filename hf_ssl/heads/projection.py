"""MLP projection and prediction heads of the joint-embedding methods.

The published heads, for a backbone feature of size d (2048 for ResNet-50, 384 / 768 for
ViT-S / ViT-B); every hidden layer is Linear -> BatchNorm -> ReLU:

- SimCLR: projector ``ProjectionHead(d, 2048, 128, num_layers=2)``.
- BYOL: projector ``ProjectionHead(d, 4096, 256, num_layers=2)``;
  predictor ``PredictionHead(256, 4096)``.
- SimSiam: projector ``ProjectionHead(d, 2048, 2048, num_layers=3, output_batch_norm=True)``;
  predictor ``PredictionHead(2048, 512)`` (a bottleneck).
- MoCo v3, ViT: projector ``ProjectionHead(d, 4096, 256, num_layers=3, output_batch_norm=True,
  bias=False)``; predictor ``PredictionHead(256, 4096, output_batch_norm=True, bias=False)``.
- MoCo v3, ResNet: projector ``ProjectionHead(d, 4096, 256, num_layers=2, output_batch_norm=True,
  bias=False)``; predictor ``PredictionHead(256, 4096, bias=False)``.
- Barlow Twins: projector ``ProjectionHead(d, 8192, 8192, num_layers=3, bias=False)``.
- VICReg: expander ``ProjectionHead(d, 8192, 8192, num_layers=3, bias=False)``.
- DINO: `hf_ssl.heads.DINOHead` ``(d, 65536)`` (hidden 2048, bottleneck 256, GELU).

Sources: SimCLR arXiv:2002.05709 and google-research/simclr model_util.py; BYOL
arXiv:2006.07733; SimSiam arXiv:2011.10566 and facebookresearch/simsiam simsiam/builder.py;
MoCo v3 arXiv:2104.02057 and facebookresearch/moco-v3 moco/builder.py ``_build_mlp``; Barlow
Twins arXiv:2103.03230 and facebookresearch/barlowtwins main.py; VICReg arXiv:2105.04906 and
facebookresearch/vicreg main_vicreg.py ``Projector``.

A linear layer followed by batch norm never has a bias (the norm's shift makes it redundant);
``bias`` decides for the others. The heads are ``nn.Sequential`` with the official layer order,
so official MoCo v3 / Barlow Twins / SimSiam head weights load by index (SimSiam's frozen bias
before its output norm aside: load those with ``strict=False``). Batch norm here is per
process: the official recipes convert it with ``nn.SyncBatchNorm.convert_sync_batchnorm`` for
statistics over the global batch. Inputs are ``(B, input_dim)``.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class ProjectionHead(nn.Sequential):
    """An MLP ``input_dim -> hidden_dim x (num_layers - 1) -> output_dim`` (see the table above).

    Args:
        input_dim: size of the backbone feature.
        hidden_dim: width of the hidden layers.
        output_dim: size of the projection.
        num_layers: number of linear layers, >= 1 (1: a single linear map).
        hidden_batch_norm: BatchNorm1d after every hidden linear layer.
        output_batch_norm: BatchNorm1d without affine parameters after the last layer (SimCLR's
            official code, MoCo v3, SimSiam).
        bias: whether linear layers NOT followed by batch norm have a bias.
        activation: non-linearity after every hidden layer.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int = 2048,
        output_dim: int = 128,
        num_layers: int = 2,
        hidden_batch_norm: bool = True,
        output_batch_norm: bool = False,
        bias: bool = True,
        activation: Literal["relu", "gelu"] = "relu",
    ) -> None:
        for name, value in (("input_dim", input_dim), ("hidden_dim", hidden_dim), ("output_dim", output_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = []
        for index in range(num_layers):
            last = index == num_layers - 1
            in_features = input_dim if index == 0 else hidden_dim
            out_features = output_dim if last else hidden_dim
            normalized = output_batch_norm if last else hidden_batch_norm
            layers.append(nn.Linear(in_features, out_features, bias=bias and not normalized))
            if normalized:
                layers.append(nn.BatchNorm1d(out_features, affine=not last))
            if not last:
                layers.append(_ACTIVATIONS[activation]())
        super().__init__(*layers)
        self.input_dim, self.output_dim = input_dim, output_dim


class PredictionHead(ProjectionHead):
    """The 2-layer predictor of BYOL, SimSiam and MoCo v3: ``input_dim -> hidden_dim -> output_dim``.

    Args:
        input_dim: size of the projection it predicts from (BYOL / MoCo v3: 256; SimSiam: 2048).
        hidden_dim: width of the hidden layer (BYOL / MoCo v3: 4096; SimSiam: 512, a bottleneck).
        output_dim: size of the prediction; defaults to `input_dim`, which the losses require.
        output_batch_norm: BatchNorm1d without affine after the last layer (MoCo v3 with ViT).
        bias: whether the last layer has a bias (BYOL, SimSiam: yes; MoCo v3: no).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int = 4096,
        output_dim: int | None = None,
        output_batch_norm: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__(
            input_dim,
            hidden_dim,
            input_dim if output_dim is None else output_dim,
            num_layers=2,
            output_batch_norm=output_batch_norm,
            bias=bias,
        )
