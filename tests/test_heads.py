"""Projection / prediction heads against the official builders; DINOHead normalisation and freezing."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hf_ssl.heads import DINOHead, PredictionHead, ProjectionHead, cancel_last_layer_gradients


def official_moco_v3_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn=True):
    """facebookresearch/moco-v3 moco/builder.py MoCo._build_mlp."""
    mlp = []
    for layer in range(num_layers):
        dim1 = input_dim if layer == 0 else mlp_dim
        dim2 = output_dim if layer == num_layers - 1 else mlp_dim
        mlp.append(nn.Linear(dim1, dim2, bias=False))
        if layer < num_layers - 1:
            mlp.append(nn.BatchNorm1d(dim2))
            mlp.append(nn.ReLU(inplace=True))
        elif last_bn:
            mlp.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*mlp)


def official_simsiam_heads(prev_dim, dim, pred_dim):
    """facebookresearch/simsiam simsiam/builder.py projector (fc) and predictor."""
    projector = nn.Sequential(
        nn.Linear(prev_dim, prev_dim, bias=False),
        nn.BatchNorm1d(prev_dim),
        nn.ReLU(inplace=True),
        nn.Linear(prev_dim, prev_dim, bias=False),
        nn.BatchNorm1d(prev_dim),
        nn.ReLU(inplace=True),
        nn.Linear(prev_dim, dim),  # its bias is frozen (requires_grad False) and cancelled by the BN
        nn.BatchNorm1d(dim, affine=False),
    )
    predictor = nn.Sequential(
        nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim), nn.ReLU(inplace=True), nn.Linear(pred_dim, dim)
    )
    return projector, predictor


def official_barlow_twins_projector(sizes):
    """facebookresearch/barlowtwins main.py BarlowTwins.__init__ projector."""
    layers = []
    for i in range(len(sizes) - 2):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=False))
        layers.append(nn.BatchNorm1d(sizes[i + 1]))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return nn.Sequential(*layers)


# The published configurations at a tenth-ish of their width.
OFFICIAL_AND_OURS = {
    "moco_v3_vit_projector": (
        lambda: official_moco_v3_mlp(3, 24, 40, 16),
        lambda: ProjectionHead(24, 40, 16, num_layers=3, output_batch_norm=True, bias=False),
    ),
    "moco_v3_vit_predictor": (
        lambda: official_moco_v3_mlp(2, 16, 40, 16),
        lambda: PredictionHead(16, 40, output_batch_norm=True, bias=False),
    ),
    "moco_v3_resnet_predictor": (
        lambda: official_moco_v3_mlp(2, 16, 40, 16, last_bn=False),
        lambda: PredictionHead(16, 40, bias=False),
    ),
    "simsiam_projector": (
        lambda: official_simsiam_heads(20, 20, 5)[0],
        lambda: ProjectionHead(20, 20, 20, num_layers=3, output_batch_norm=True),
    ),
    "simsiam_predictor": (lambda: official_simsiam_heads(20, 20, 5)[1], lambda: PredictionHead(20, 5)),
    "barlow_twins_projector": (
        lambda: official_barlow_twins_projector([24, 32, 32, 32]),
        lambda: ProjectionHead(24, 32, 32, num_layers=3, bias=False),
    ),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_AND_OURS))
def test_heads_have_the_official_layout_and_load_official_weights(name):
    build_official, build_ours = OFFICIAL_AND_OURS[name]
    torch.manual_seed(0)
    official, ours = build_official(), build_ours()
    official_shapes = [(key, value.shape) for key, value in official.state_dict().items() if key != "6.bias"]
    assert [(key, value.shape) for key, value in ours.state_dict().items()] == official_shapes
    incompatible = ours.load_state_dict(official.state_dict(), strict=False)
    assert not incompatible.missing_keys
    # SimSiam's projector keeps a frozen bias in front of its last BN; nothing else is extra.
    assert incompatible.unexpected_keys == (["6.bias"] if name == "simsiam_projector" else [])
    features = torch.randn(6, official[0].in_features)
    torch.testing.assert_close(ours(features), official(features))


def test_projection_head_options_and_shapes():
    simclr = ProjectionHead(32)  # 32 -> 2048 -> 128
    assert simclr(torch.randn(4, 32)).shape == (4, 128)
    assert [type(layer) for layer in simclr] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert simclr[0].bias is None and simclr[3].bias is not None  # no bias in front of batch norm
    plain = ProjectionHead(8, 16, 4, num_layers=3, hidden_batch_norm=False, activation="gelu")
    assert [type(layer) for layer in plain] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    assert all(layer.bias is not None for layer in plain if isinstance(layer, nn.Linear))
    single = ProjectionHead(8, output_dim=3, num_layers=1, output_batch_norm=True)
    assert [type(layer) for layer in single] == [nn.Linear, nn.BatchNorm1d] and not single[1].affine
    assert PredictionHead(256)(torch.randn(2, 256)).shape == (2, 256)  # BYOL: 256 -> 4096 -> 256
    assert (PredictionHead(6, 3, output_dim=5).input_dim, PredictionHead(6, 3, output_dim=5).output_dim) == (6, 5)


def test_projection_head_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_layers"):
        ProjectionHead(8, num_layers=0)
    with pytest.raises(ValueError, match="hidden_dim"):
        ProjectionHead(8, hidden_dim=0)
    with pytest.raises(ValueError, match="activation"):
        ProjectionHead(8, activation="tanh")


def _small_dino_head(**kwargs):
    torch.manual_seed(0)
    return DINOHead(12, output_dim=50, hidden_dim=32, bottleneck_dim=8, **kwargs)


def test_dino_head_layout_init_and_normalised_output():
    head = _small_dino_head()
    assert [type(layer) for layer in head.mlp] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    weights = torch.cat([layer.weight.flatten() for layer in head.mlp if isinstance(layer, nn.Linear)])
    assert weights.std().item() == pytest.approx(0.02, rel=0.1) and weights.abs().max() <= 2.0
    assert all(torch.all(layer.bias == 0) for layer in head.mlp if isinstance(layer, nn.Linear))
    features = torch.randn(5, 12)
    output = head(features)
    assert output.shape == (5, 50)
    # Gain 1: the output is the cosine between the bottleneck feature and each prototype.
    bottleneck = F.normalize(head.mlp(features), dim=-1)
    prototypes = F.normalize(head.last_layer.parametrizations.weight.original1, dim=-1)
    torch.testing.assert_close(output, bottleneck @ prototypes.T)
    assert output.abs().max() <= 1.0 + 1e-6
    assert DINOHead(12).last_layer.weight.shape == (65536, 256)  # published K and bottleneck


def test_dino_head_norm_last_layer_freezes_the_gain():
    frozen, free = _small_dino_head(), _small_dino_head(norm_last_layer=False)
    for head in (frozen, free):
        gain = head.last_layer.parametrizations.weight.original0
        assert torch.all(gain == 1.0) and gain.shape == (50, 1)
        head(torch.randn(4, 12)).pow(2).sum().backward()
    assert not frozen.last_layer.parametrizations.weight.original0.requires_grad
    assert frozen.last_layer.parametrizations.weight.original0.grad is None
    assert free.last_layer.parametrizations.weight.original0.grad.abs().sum() > 0
    assert frozen.last_layer.parametrizations.weight.original1.grad.abs().sum() > 0


def test_dino_head_state_dict_keys_are_stable_and_official_checkpoints_load():
    head = _small_dino_head()
    assert list(head.state_dict()) == [
        "mlp.0.weight",
        "mlp.0.bias",
        "mlp.2.weight",
        "mlp.2.bias",
        "mlp.4.weight",
        "mlp.4.bias",
        "last_layer.parametrizations.weight.original0",
        "last_layer.parametrizations.weight.original1",
    ]
    features = torch.randn(3, 12)
    reloaded = DINOHead(12, output_dim=50, hidden_dim=32, bottleneck_dim=8)
    reloaded.load_state_dict(head.state_dict(), strict=True)
    torch.testing.assert_close(reloaded(features), head(features))
    teacher = copy.deepcopy(head)  # how a DINO teacher is made
    torch.testing.assert_close(teacher(features), head(features))

    # An official facebookresearch/dino head checkpoint names the weight-norm tensors weight_g / weight_v.
    official = {key: value for key, value in head.state_dict().items() if key.startswith("mlp.")}
    official["last_layer.weight_g"] = torch.full((50, 1), 2.0)
    official["last_layer.weight_v"] = torch.randn(50, 8)
    converted = DINOHead(12, output_dim=50, hidden_dim=32, bottleneck_dim=8)
    converted.load_state_dict(official, strict=True)
    bottleneck = F.normalize(head.mlp(features), dim=-1)
    prototypes = F.normalize(official["last_layer.weight_v"], dim=-1)
    torch.testing.assert_close(converted(features), 2.0 * bottleneck @ prototypes.T)


def test_cancel_last_layer_gradients_finds_heads_inside_models():
    student = nn.Sequential(nn.Linear(6, 12), _small_dino_head(norm_last_layer=False))
    student(torch.randn(4, 6)).sum().backward()
    cancel_last_layer_gradients(student)
    head = student[1]
    assert all(parameter.grad is None for parameter in head.last_layer.parameters())
    assert all(parameter.grad is not None for parameter in head.mlp.parameters())
    assert student[0].weight.grad is not None
    # The optimizer then leaves the prototypes unchanged.
    prototypes = head.last_layer.parametrizations.weight.original1.detach().clone()
    torch.optim.AdamW(student.parameters(), lr=0.1, weight_decay=0.5).step()
    torch.testing.assert_close(head.last_layer.parametrizations.weight.original1, prototypes)
    with pytest.raises(ValueError, match="DINOHead"):
        cancel_last_layer_gradients(nn.Linear(2, 2))
