"""A real short SplitMask training run on digits at 32 px: the loss must fall clearly."""

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from tiny_models import tiny_splitmask


def _digits_32px() -> torch.Tensor:
    images = torch.tensor(load_digits().images, dtype=torch.float32) / 16.0  # (1797, 8, 8)
    images = F.interpolate(images[:, None], size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return (images - 0.5) / 0.5


@pytest.mark.slow
def test_splitmask_loss_falls_on_digits():
    torch.manual_seed(0)
    images = _digits_32px()
    model = tiny_splitmask(fitted=False, hidden_size=48, num_attention_heads=3, intermediate_size=96, tokenizer_vocab_size=64)
    errors = model.fit_tokenizer([images[i : i + 512] for i in range(0, len(images), 512)], num_epochs=3, progress=False)
    assert errors[-1] < errors[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    generator = torch.Generator().manual_seed(0)
    mim_losses, contrastive_losses = [], []
    for _step in range(300):
        batch = images[torch.randint(0, len(images), (64,), generator=generator)]
        output = model(batch)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        mim_losses.append(output.mim_loss.item())
        contrastive_losses.append(output.contrastive_loss.item())
    first_mim, last_mim = sum(mim_losses[:20]) / 20, sum(mim_losses[-20:]) / 20
    first_nce, last_nce = sum(contrastive_losses[:20]) / 20, sum(contrastive_losses[-20:]) / 20
    assert last_mim < 0.8 * first_mim, (first_mim, last_mim)
    # 64 images per batch: chance level of InfoNCE is log(64) = 4.16; the halves must find each other.
    assert last_nce < min(first_nce, math.log(64)) - 0.2, (first_nce, last_nce)
