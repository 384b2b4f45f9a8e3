"""CLIP and SigLIP losses against their papers' pseudocode, transcribed with loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_ssl.losses import clip_loss, siglip_loss


def _pair(batch=5, dimensions=4, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, dimensions, generator=generator, dtype=dtype),
        torch.randn(batch, dimensions, generator=generator, dtype=dtype),
    )


def reference_clip(image_features, text_features, t):
    """Figure 3 of arXiv:2103.00020: CE over axis 0 (per text) and axis 1 (per image), averaged."""
    image_embeddings = F.normalize(image_features, dim=1)
    text_embeddings = F.normalize(text_features, dim=1)
    logits = image_embeddings @ text_embeddings.T * math.exp(t)
    count = len(logits)
    loss_per_image = sum(-(logits[i, i] - torch.logsumexp(logits[i, :], dim=0)) for i in range(count)) / count
    loss_per_text = sum(-(logits[j, j] - torch.logsumexp(logits[:, j], dim=0)) for j in range(count)) / count
    return (loss_per_image + loss_per_text) / 2


def reference_siglip(image_features, text_features, t_prime, b):
    """Algorithm 1 of arXiv:2303.15343 with an explicit double loop."""
    zimg, ztxt = F.normalize(image_features, dim=1), F.normalize(text_features, dim=1)
    count = len(zimg)
    total = 0.0
    for i in range(count):
        for j in range(count):
            label = 1.0 if i == j else -1.0
            logit = zimg[i] @ ztxt[j] * math.exp(t_prime) + b
            total = total - F.logsigmoid(label * logit)
    return total / count


def test_clip_matches_figure_3_pseudocode():
    images, texts = _pair()
    for t in (math.log(1 / 0.07), 0.0):
        torch.testing.assert_close(clip_loss(images, texts, logit_scale=math.exp(t)), reference_clip(images, texts, t))


def test_clip_hand_computed_value():
    # Orthonormal matching pairs at scale s: each row's softmax is (e^s, 1) -> log(1 + e^-s).
    basis = torch.eye(2)
    assert clip_loss(basis, 3 * basis, logit_scale=2.0).item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-6)


def test_siglip_matches_algorithm_1_and_hand_values():
    images, texts = _pair()
    for t_prime, b in ((math.log(10.0), -10.0), (1.0, 0.5)):
        got = siglip_loss(images, texts, logit_scale=math.exp(t_prime), logit_bias=b)
        torch.testing.assert_close(got, reference_siglip(images, texts, t_prime, b))
    # One pair (the smallest batch): -log sigmoid(s cos + b).
    image, text = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    expected = -math.log(1 / (1 + math.exp(-(10.0 / math.sqrt(2) - 10.0))))
    assert siglip_loss(image, text, logit_scale=10.0, logit_bias=-10.0).item() == pytest.approx(expected, rel=1e-6)


def test_learnable_scale_and_bias_get_exact_gradients():
    images, texts = _pair(batch=3, dimensions=3, dtype=torch.float64)
    images.requires_grad_(), texts.requires_grad_()
    scale = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, t, s: clip_loss(i, t, s), (images, texts, scale))
    assert torch.autograd.gradcheck(lambda i, t, s, b: siglip_loss(i, t, s, b), (images, texts, scale, bias))


def test_half_precision_inputs_are_computed_in_float32():
    images, texts = _pair()
    half = clip_loss(images.bfloat16(), texts.bfloat16(), 10.0)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, clip_loss(images, texts, 10.0), rtol=0.02, atol=0.02)


def test_bad_input_raises_value_errors():
    images, texts = _pair()
    with pytest.raises(ValueError, match="image_embeddings and text_embeddings"):
        clip_loss(images, texts[:3], 10.0)
    with pytest.raises(ValueError, match="image_embeddings and text_embeddings"):
        siglip_loss(images[0], texts[0], 10.0, -10.0)
