"""Attention analysis: metrics against hand-computed values, maps on a tiny ViT, the CLI."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import SwinConfig, SwinModel, ViTConfig, ViTImageProcessor, ViTModel

from hf_ssl.analysis import (
    AnalysisInputError,
    attention_entropy,
    attention_mass_masks,
    attention_statistics,
    average_attention_distance,
    cka_matrix,
    cls_attention,
    cls_attention_maps,
    encode,
    head_kl_divergence,
    layer_representations,
    linear_cka,
    load_vit_encoder,
    pairwise_head_kl_divergence,
    patch_attention,
    patch_centre_distances,
    prefix_attention_share,
    prepare_vit,
    preprocess_images,
    representation_cka,
)
from hf_ssl.analysis.figures import plot_cka_matrix, plot_head_kl_divergence, plot_per_head_statistic
from hf_ssl.analysis.maps import mask_jaccard
from hf_ssl.cli.analyze import main

ROOT = Path(__file__).resolve().parents[1]
DIAGONAL = 4 * math.sqrt(2)
TINY_VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64)


def tiny_vit(**overrides) -> ViTModel:
    torch.manual_seed(0)
    return ViTModel(ViTConfig(**{**TINY_VIT, **overrides}), add_pooling_layer=False)


def random_pixels(count: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(3))


def rows(*distributions) -> torch.Tensor:
    """(1, 1, Q, K) attention from Q rows."""
    return torch.tensor(distributions, dtype=torch.float64)[None, None]


# ---- attention distance -------------------------------------------------------------------------

def test_patch_centre_distances_on_a_2x2_grid():
    # Patches 0 1 / 2 3 with 4-px patches: neighbours 4 px apart, diagonals 4*sqrt(2).
    expected = torch.tensor([[0, 4, 4, DIAGONAL], [4, 0, DIAGONAL, 4], [4, DIAGONAL, 0, 4], [DIAGONAL, 4, 4, 0]],
                            dtype=torch.float64)
    torch.testing.assert_close(patch_centre_distances(2, 2, 4), expected)


def test_patch_centre_distances_of_a_rectangular_grid_are_row_major():
    distances = patch_centre_distances(2, 3, 1)  # patches 0 1 2 / 3 4 5
    assert distances[0, 2] == 2 and distances[0, 3] == 1 and distances[2, 3] == pytest.approx(math.sqrt(5))


def test_average_attention_distance_by_hand():
    identity = torch.eye(4, dtype=torch.float64)
    uniform = torch.full((4, 4), 0.25, dtype=torch.float64)
    opposite = torch.eye(4, dtype=torch.float64).flip(-1)  # 0<->3, 1<->2: the diagonal neighbour
    attention = torch.stack([identity, uniform, opposite])[None]  # (1, 3 heads, 4, 4)
    distances = average_attention_distance(attention, 2, 2, patch_size=4)
    torch.testing.assert_close(distances, torch.tensor([0.0, (4 + 4 + DIAGONAL) / 4, DIAGONAL], dtype=torch.float64))


def test_average_attention_distance_averages_queries_and_images():
    half_neighbour = rows([0.5, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1])  # only query 0 moves: 2 px
    to_neighbour = rows([0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0])  # every query 4 px
    distances = average_attention_distance(torch.cat([half_neighbour, to_neighbour]), 2, 2, patch_size=4)
    torch.testing.assert_close(distances, torch.tensor([(2 / 4 + 4) / 2], dtype=torch.float64))


def test_average_attention_distance_rejects_a_wrong_grid():
    with pytest.raises(ValueError, match="3x3 grid"):
        average_attention_distance(torch.full((1, 1, 4, 4), 0.25), 3, 3, patch_size=4)


def test_patch_attention_drops_cls_and_renormalises():
    # CLS + 4 patches; each patch query sends half its mass to CLS, half to itself.
    attention = torch.zeros(1, 1, 5, 5)
    attention[0, 0, 0] = 0.2
    for query in range(1, 5):
        attention[0, 0, query, 0] = 0.5
        attention[0, 0, query, query] = 0.5
    patches = patch_attention(attention, num_prefix_tokens=1)
    torch.testing.assert_close(patches[0, 0], torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(prefix_attention_share(attention, 1), torch.tensor([0.5], dtype=torch.float64))
    raw = patch_attention(attention, num_prefix_tokens=1, renormalize=False)
    torch.testing.assert_close(raw.sum(-1), torch.full((1, 1, 4), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        patch_attention(attention, num_prefix_tokens=5)


# ---- entropy and KL -------------------------------------------------------------------------------

def test_entropy_of_uniform_one_hot_and_half_attention():
    uniform = torch.full((1, 1, 3, 7), 1 / 7)
    assert attention_entropy(uniform).item() == pytest.approx(math.log(7))
    assert attention_entropy(rows([1, 0, 0, 0])).item() == pytest.approx(0.0)
    assert attention_entropy(rows([0.5, 0.5, 0, 0], [0.25] * 4)).item() == pytest.approx((math.log(2) + math.log(4)) / 2)


def test_kl_between_identical_heads_is_zero():
    distribution = torch.softmax(torch.randn(2, 1, 5, 6, generator=torch.Generator().manual_seed(0)), dim=-1)
    heads = distribution.expand(2, 3, 5, 6)
    torch.testing.assert_close(pairwise_head_kl_divergence(heads), torch.zeros(3, 3, dtype=torch.float64))
    assert head_kl_divergence(heads).item() == pytest.approx(0.0, abs=1e-12)


def test_kl_between_two_heads_by_hand():
    attention = torch.tensor([[[[0.5, 0.5]], [[0.9, 0.1]]]], dtype=torch.float64)  # (1, 2 heads, 1 query, 2 keys)
    forward = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    backward = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    pairwise = pairwise_head_kl_divergence(attention)
    torch.testing.assert_close(pairwise, torch.tensor([[0.0, forward], [backward, 0.0]], dtype=torch.float64))
    assert head_kl_divergence(attention).item() == pytest.approx((forward + backward) / 2)


def test_kl_matches_torch_kl_div_on_random_attention():
    attention = torch.softmax(torch.randn(3, 4, 6, 9, generator=torch.Generator().manual_seed(1)), dim=-1).double()
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            per_query = torch.nn.functional.kl_div(attention[:, j].log(), attention[:, i], reduction="none").sum(-1)
            expected[i, j] = per_query.mean()
    torch.testing.assert_close(pairwise_head_kl_divergence(attention), expected)


def test_kl_needs_two_heads():
    with pytest.raises(ValueError, match="at least 2 heads"):
        head_kl_divergence(torch.full((1, 1, 2, 2), 0.5))


# ---- CKA -------------------------------------------------------------------------------------------

def reference_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """HSIC form of Kornblith et al. (Eq. 3-4): tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    centring = torch.eye(n, dtype=torch.float64) - 1.0 / n
    gram_x, gram_y = centring @ x @ x.T @ centring, centring @ y @ y.T @ centring
    return float((gram_x * gram_y).sum() / ((gram_x * gram_x).sum() * (gram_y * gram_y).sum()).sqrt())


def test_cka_of_a_matrix_with_itself_is_one():
    features = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    assert linear_cka(features, features).item() == pytest.approx(1.0)


@pytest.mark.parametrize("width", [5, 40])  # feature form (p < n) and Gram form (p > n)
def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(width):
    generator = torch.Generator().manual_seed(width)
    x = torch.randn(16, width, generator=generator)
    y = x[:, : max(2, width // 2)] ** 2 + 0.3 * torch.randn(16, max(2, width // 2), generator=generator)
    orthogonal, _ = torch.linalg.qr(torch.randn(width, width, generator=generator))
    base = linear_cka(x, y).item()
    assert base == pytest.approx(reference_cka(x, y))
    assert linear_cka(3.7 * x @ orthogonal, y).item() == pytest.approx(base)
    assert linear_cka(x + 5.0, 0.01 * y).item() == pytest.approx(base)  # centring removes offsets


def test_cka_matrix_is_symmetric_with_unit_diagonal_and_matches_pairs():
    generator = torch.Generator().manual_seed(2)
    narrow = [torch.randn(30, 4, generator=generator) for _ in range(3)]
    for layers in (narrow, [torch.randn(10, 50, generator=generator) for _ in range(3)]):
        matrix = cka_matrix(layers)
        torch.testing.assert_close(matrix, matrix.T)
        torch.testing.assert_close(matrix.diagonal(), torch.ones(3, dtype=torch.float64))
        assert matrix[0, 1].item() == pytest.approx(reference_cka(layers[0], layers[1]))
    cross = cka_matrix(narrow, narrow[:2])
    assert cross.shape == (3, 2) and cross[2, 1].item() == pytest.approx(reference_cka(narrow[2], narrow[1]))


def test_cka_of_constant_features_is_zero_and_row_counts_must_match():
    assert linear_cka(torch.ones(5, 3), torch.randn(5, 2)).item() == 0.0
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(ValueError, match="same examples"):
        cka_matrix([torch.randn(5, 3)], [torch.randn(6, 3)])


# ---- DINO maps and masks ---------------------------------------------------------------------------

def dino_threshold(attention: torch.Tensor, mass: float) -> torch.Tensor:
    """The official script's recipe: ascending sort, normalise, keep where cumsum > 1 - mass."""
    values, order = torch.sort(attention)
    values = values / values.sum(dim=1, keepdim=True)
    keep = values.cumsum(dim=1) > (1 - mass)
    restore = torch.argsort(order)
    return torch.stack([keep[head][restore[head]] for head in range(attention.shape[0])])


def test_mass_mask_by_hand():
    attention_map = torch.tensor([[0.5, 0.1], [0.3, 0.1]])
    assert attention_mass_masks(attention_map, 0.6).tolist() == [[True, False], [True, False]]
    assert attention_mass_masks(attention_map, 0.45).tolist() == [[True, False], [False, False]]
    assert attention_mass_masks(attention_map, 1.0).all()


def test_mass_masks_match_the_dino_recipe():
    generator = torch.Generator().manual_seed(4)
    maps = torch.softmax(3 * torch.randn(6, 49, generator=generator), dim=-1)  # 6 heads, 7x7 patches
    for mass in (0.3, 0.6, 0.9):
        ours = attention_mass_masks(maps.reshape(6, 7, 7), mass).reshape(6, 49)
        assert torch.equal(ours, dino_threshold(maps, mass))
        kept_mass = (maps * ours).sum(-1)
        assert (kept_mass >= mass - 1e-6).all()


def test_mass_must_be_a_fraction():
    with pytest.raises(ValueError, match="mass"):
        attention_mass_masks(torch.ones(2, 2), 1.5)


def test_cls_attention_maps_take_the_cls_row_over_patches():
    attention = torch.softmax(torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(5)), dim=-1)
    maps = cls_attention_maps(attention, 2, 2)
    assert maps.shape == (2, 3, 2, 2)
    torch.testing.assert_close(maps[1, 2].flatten(), attention[1, 2, 0, 1:])
    with pytest.raises(ValueError, match="expected 1 prefix"):
        cls_attention_maps(attention, 3, 3)


# ---- on a tiny ViT ---------------------------------------------------------------------------------

def test_encode_needs_eager_attention():
    with pytest.raises(AnalysisInputError, match="eager"):
        encode(tiny_vit(), random_pixels())


def test_encode_returns_probabilities_and_the_grid():
    model = prepare_vit(tiny_vit())
    outputs = encode(model, random_pixels())
    assert len(outputs.attentions) == 2 and len(outputs.hidden_states) == 3
    assert outputs.attentions[0].shape == (3, 2, 17, 17)
    torch.testing.assert_close(outputs.attentions[1].sum(-1), torch.ones(3, 2, 17))
    grid = outputs.grid
    assert (grid.grid_height, grid.grid_width, grid.patch_size, grid.num_prefix_tokens) == (4, 4, 8, 1)


def test_attention_statistics_on_a_tiny_vit_agree_with_the_tensor_functions():
    model = prepare_vit(tiny_vit())
    pixels = random_pixels(5)
    statistics = attention_statistics(model, pixels, batch_size=2)
    assert statistics.attention_distance.shape == (2, 2) and statistics.pairwise_head_kl_divergence.shape == (2, 2, 2)
    patches = patch_attention(encode(model, pixels).attentions[1], 1)
    torch.testing.assert_close(statistics.attention_distance[1], average_attention_distance(patches, 4, 4, 8))
    torch.testing.assert_close(statistics.attention_entropy[1], attention_entropy(patches))
    assert statistics.head_kl_divergence[1].item() == pytest.approx(head_kl_divergence(patches).item())
    assert (statistics.attention_entropy <= math.log(16) + 1e-9).all()
    report = statistics.to_dict()
    assert report["uniform_attention_entropy_nats"] == pytest.approx(math.log(16))
    assert json.loads(json.dumps(report))["num_heads"] == 2


def test_deit_has_two_prefix_tokens_and_swin_is_refused():
    from transformers import DeiTConfig, DeiTModel

    torch.manual_seed(0)
    deit = prepare_vit(DeiTModel(DeiTConfig(**TINY_VIT), add_pooling_layer=False))
    assert attention_statistics(deit, random_pixels(2)).grid.num_prefix_tokens == 2
    swin = SwinModel(SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1], num_heads=[2], window_size=4))
    with pytest.raises(AnalysisInputError, match="not a ViT"):
        prepare_vit(swin)


def test_cls_attention_maps_and_masks_on_a_tiny_vit():
    model = prepare_vit(tiny_vit())
    result = cls_attention(model, random_pixels(3), mass=0.6)
    assert result.maps.shape == (3, 2, 4, 4) and result.masks.dtype == torch.bool
    kept = (result.maps / result.maps.sum(dim=(-2, -1), keepdim=True) * result.masks).sum(dim=(-2, -1))
    assert (kept >= 0.6 - 1e-6).all() and result.masks.any(dim=(-2, -1)).all()


def test_layer_representations_and_self_cka():
    model = prepare_vit(tiny_vit())
    pixels = random_pixels(4)
    assert [tuple(f.shape) for f in layer_representations(model, pixels, "tokens")] == [(64, 32)] * 3
    assert layer_representations(model, pixels, "flatten")[0].shape == (4, 17 * 32)
    matrix = representation_cka(model, pixels, pooling="mean")
    assert matrix.shape == (3, 3)
    torch.testing.assert_close(matrix.diagonal(), torch.ones(3, dtype=torch.float64))
    other = prepare_vit(tiny_vit(patch_size=4, num_hidden_layers=1))
    assert representation_cka(model, pixels, other, pooling="flatten").shape == (3, 2)
    with pytest.raises(AnalysisInputError, match="pooling"):
        representation_cka(model, pixels, other, pooling="tokens")


def test_preprocessing_uses_the_processor_or_imagenet_normalisation():
    model = tiny_vit()
    image = Image.fromarray(np.full((20, 20, 3), 255, dtype=np.uint8))
    fallback = preprocess_images([image], model)
    assert fallback.shape == (1, 3, 32, 32)
    torch.testing.assert_close(fallback[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    torch.testing.assert_close(preprocess_images([image], model, processor), torch.ones(1, 3, 32, 32))


def test_load_vit_encoder_from_plain_run_and_backbone_folders(tmp_path):
    from tiny_models import tiny_splitmask

    tiny_vit().save_pretrained(tmp_path / "plain")
    assert isinstance(load_vit_encoder(tmp_path / "plain"), ViTModel)
    run = tiny_splitmask(fitted=False)
    run.save_pretrained(tmp_path / "run")
    encoder = load_vit_encoder(tmp_path / "run")
    assert isinstance(encoder, ViTModel) and encoder.config._attn_implementation == "eager"
    run.export_backbone(tmp_path / "exported" / "backbone")
    assert isinstance(load_vit_encoder(tmp_path / "exported"), ViTModel)
    with pytest.raises(AnalysisInputError, match="not found"):
        load_vit_encoder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisInputError, match="config.json"):
        load_vit_encoder(tmp_path / "empty")


def test_figures_are_written(tmp_path):
    values = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    paths = [
        plot_per_head_statistic(values, tmp_path / "distance.png", "pixels", "distance", reference=0.5),
        plot_head_kl_divergence(values[:, 0], tmp_path / "kl.png", "kl"),
        plot_cka_matrix(torch.eye(4), tmp_path / "cka.png", "cka"),
    ]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_mask_jaccard_by_hand():
    # a 2x2 patch grid over 4x4 pixels; the truth is the top-left 2x2 pixels plus one pixel beside them
    truth = torch.zeros(1, 4, 4, dtype=torch.bool)
    truth[0, :2, :2] = True
    truth[0, 0, 2] = True
    heads = torch.zeros(1, 3, 2, 2, dtype=torch.bool)
    heads[0, 0, 0, 0] = True  # exactly the top-left patch: 4 / 5
    heads[0, 1, 0] = True  # the top row of patches: 5 / 8
    jaccard = mask_jaccard(heads, truth)  # head 2 keeps nothing: 0 / 5
    assert torch.allclose(jaccard, torch.tensor([[4 / 5, 5 / 8, 0.0]], dtype=torch.float64))
    assert mask_jaccard(torch.zeros(1, 1, 2, 2, dtype=torch.bool), torch.zeros(1, 4, 4, dtype=torch.bool)).item() == 1
    with pytest.raises(ValueError, match="does not split"):
        mask_jaccard(heads, torch.zeros(1, 5, 4, dtype=torch.bool))


def test_attention_masks_are_scored_against_the_scenes_digits(saved_vit, tmp_path, capsys):
    assert main(["attention", "--model", str(saved_vit), "--num_images", "3", "--masks", "--out", str(tmp_path / "m")]) == 0
    report = json.loads((tmp_path / "m" / "attention_maps.json").read_text())
    heads = report["num_heads"]
    assert len(report["jaccard"]["per_head"]) == heads and 0 <= report["jaccard"]["best_head_jaccard"] <= 1
    assert report["jaccard"]["best_head_jaccard"] == max(report["jaccard"]["per_head"])
    assert 0 < report["jaccard"]["every_patch"] < report["jaccard"]["foreground_patches"] <= 1  # the scale
    assert all(len(image["jaccard_per_head"]) == heads for image in report["images"])
    assert (tmp_path / "m" / "00-scenes-test-0" / "ground-truth.png").is_file()
    assert "best head" in capsys.readouterr().out
    # the same, from a user's image and mask files
    image, mask = tmp_path / "scene.png", tmp_path / "scene-mask.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    Image.fromarray(np.pad(np.ones((16, 16), dtype=np.uint8), 8)).save(mask)
    assert main(["attention", "--model", str(saved_vit), "--images", str(image), "--masks", str(mask),
                 "--out", str(tmp_path / "u")]) == 0
    assert len(json.loads((tmp_path / "u" / "attention_maps.json").read_text())["images"][0]["jaccard_per_head"]) == heads


# ---- command line ----------------------------------------------------------------------------------

@pytest.fixture
def saved_vit(tmp_path):
    folder = tmp_path / "tiny-vit"
    tiny_vit().save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_cli_bad_input_exits_2_with_one_line(saved_vit, tmp_path, capsys):
    (tmp_path / "not-an-image.jpg").write_text("hello")
    swin_folder = tmp_path / "swin"
    SwinModel(SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1], num_heads=[2], window_size=4)).save_pretrained(swin_folder)
    cases = [
        ["metrics", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
        ["attention", "--model", str(saved_vit), "--images", str(tmp_path / "not-an-image.jpg"), "--out", str(tmp_path / "o")],
        ["attention", "--model", str(saved_vit), "--images", str(tmp_path / "absent.png"), "--out", str(tmp_path / "o")],
        ["cka", "--model", str(swin_folder), "--out", str(tmp_path / "o")],
        ["attention", "--model", str(saved_vit), "--mass", "0", "--out", str(tmp_path / "o")],
        ["attention", "--model", str(saved_vit)],
        ["attention", "--model", str(saved_vit), "--images", str(tmp_path / "a.png"), "--masks", "m1.png", "m2.png",
         "--out", str(tmp_path / "o")],
        ["attention", "--model", str(saved_vit), "--masks", "m1.png", "--out", str(tmp_path / "o")],
        ["attention", "--model", str(saved_vit), "--bundled_variant", "digits", "--masks", "--out", str(tmp_path / "o")],
    ]
    for argv in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        error_lines = capsys.readouterr().err.strip().splitlines()
        assert len(error_lines) == 1 and error_lines[0].startswith("error:"), (argv, error_lines)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_cli_writes_maps_metrics_and_cka(saved_vit, tmp_path):
    images = []
    for index in range(2):
        path = tmp_path / f"picture{index}.png"
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    other = tmp_path / "other-vit"
    tiny_vit(patch_size=4, num_hidden_layers=3).save_pretrained(other)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    commands = [
        [sys.executable, "-m", "hf_ssl.cli.analyze", "attention", "--model", str(saved_vit), "--images", *images,
         "--out", str(tmp_path / "maps")],
        [sys.executable, str(ROOT / "trainers" / "analyze.py"), "metrics", "--model", str(saved_vit), "--num_images", "6",
         "--out", str(tmp_path / "metrics")],
        [sys.executable, "-m", "hf_ssl.cli.analyze", "cka", "--model", str(saved_vit), "--other_model", str(other),
         "--num_images", "8", "--out", str(tmp_path / "cka")],
    ]
    for command in commands:
        result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr

    maps = json.loads((tmp_path / "maps" / "attention_maps.json").read_text())
    assert [entry["folder"] for entry in maps["images"]] == ["00-picture0", "01-picture1"]
    for folder in ("00-picture0", "01-picture1"):
        for name in ("image.png", "attention-head0.png", "attention-head1.png", "mask-head0.png", "mask-head1.png"):
            assert (tmp_path / "maps" / folder / name).is_file()
    assert (tmp_path / "maps" / "attention_grid.png").is_file()
    assert all(0 < fraction <= 1 for entry in maps["images"] for fraction in entry["mask_patch_fraction"])

    metrics = json.loads((tmp_path / "metrics" / "attention_metrics.json").read_text())
    assert metrics["num_images"] == 6 and len(metrics["attention_distance_pixels"]) == 2
    assert len(metrics["head_kl_divergence"]) == 2
    for name in ("attention_distance.png", "attention_entropy.png", "head_kl_divergence.png"):
        assert (tmp_path / "metrics" / name).is_file()

    cka = json.loads((tmp_path / "cka" / "cka.json").read_text())
    assert np.asarray(cka["model"]).shape == (3, 3) and np.asarray(cka["model_vs_other_model"]).shape == (3, 4)
    assert np.allclose(np.diag(cka["other_model"]), 1.0)
    for name in ("cka_model.png", "cka_other_model.png", "cka_model_vs_other_model.png"):
        assert (tmp_path / "cka" / name).is_file()


def test_beit_encoders_are_analysed_like_plain_vits(tmp_path):
    """SplitMask / BEiT / SimMIM export BEiT's ViT at 224 px: the analysis loads and reads it."""
    from transformers import BeitConfig, BeitModel

    from hf_ssl.analysis.encoders import encode, load_vit_encoder

    BeitModel(BeitConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, use_shared_relative_position_bias=True)).save_pretrained(tmp_path)
    outputs = encode(load_vit_encoder(tmp_path), torch.randn(2, 3, 32, 32))
    assert [tuple(attention.shape) for attention in outputs.attentions] == [(2, 2, 17, 17)] * 2
    assert outputs.grid.num_prefix_tokens == 1
    torch.testing.assert_close(outputs.attentions[0].sum(-1), torch.ones(2, 2, 17))
