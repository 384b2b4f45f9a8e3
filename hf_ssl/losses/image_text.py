"""Image-text losses of a CLIP-style dual encoder: CLIP's softmax loss and SigLIP's sigmoid loss.

Both take the two towers' embeddings (normalised here, as in the papers' pseudocode) and the
learnable logit scale -- the multiplier exp(t), NOT t itself, as open_clip passes
``logit_scale.exp()`` -- so the parameters stay in the model. Published initialisations:
CLIP t = log(1 / 0.07) (scale 14.3), scale clipped at 100; SigLIP t' = log(10), bias b = -10.

Row i of the image batch and row i of the text batch are a matching pair. Across processes
each process scores its own rows against the gathered rows of every process, with gradients
(see `hf_ssl.distributed`): the mean of the per-process losses is the global-batch loss, and
the DDP-averaged gradient is the single-process one. Every process must hold B rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_ssl.distributed import gather_with_grad

from .embeddings import check_pair, global_row_indices, matched_rows_cross_entropy, normalized


def clip_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    logit_scale: torch.Tensor | float,
    gather_distributed: bool = True,
) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over the global batch (Radford et al. 2021, arXiv:2103.00020).

    The pseudocode of the paper's Figure 3, on L2-normalised embeddings I and T of N pairs:

        logits = exp(t) * I T^T                                   (N, N)
        loss   = ( CE(logits, arange(N)) + CE(logits^T, arange(N)) ) / 2

    Across processes this is open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)``
    (src/open_clip/loss.py): this process's images against every text, its texts against every
    image, positives at their global rows.

    Args:
        image_embeddings: ``(B, D)`` image-tower projections.
        text_embeddings: ``(B, D)`` text-tower projections; row i describes image i.
        logit_scale: the multiplier exp(t) > 0, a scalar tensor (learnable) or a float.
        gather_distributed: use every process's pairs as negatives.

    Returns:
        Scalar: the mean of the two directions over this process's B rows.
    """
    check_pair(image_embeddings, text_embeddings, "image_embeddings", "text_embeddings")
    images, texts = normalized(image_embeddings), normalized(text_embeddings)
    image_to_text = matched_rows_cross_entropy(images, texts, logit_scale, gather_distributed)
    text_to_image = matched_rows_cross_entropy(texts, images, logit_scale, gather_distributed)
    return (image_to_text + text_to_image) / 2


def siglip_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
    gather_distributed: bool = True,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023, arXiv:2303.15343, Algorithm 1).

    Every image-text pair is an independent binary decision, z_ij = +1 for a match, -1 else:

        logits = exp(t') * I T^T + b
        loss   = -1/|B| sum_i sum_j log sigmoid(z_ij * logits_ij)

    with |B| the number of images. No softmax normalises over the batch, so the loss is
    well-defined at any batch size, down to one pair; the learnable bias (initialised at -10)
    offsets the imbalance of one positive against many negatives.

    Across processes this process's images are scored against ALL texts, gathered with
    gradients: O(B * N) memory, simple, and the exact global loss. The paper's chunked
    implementation (and open_clip's ``SigLipLoss`` neighbour exchange) passes text chunks
    around a ring instead, which computes the same sum with O(B * B) memory per step.

    Args:
        image_embeddings: ``(B, D)`` image-tower projections.
        text_embeddings: ``(B, D)`` text-tower projections; row i describes image i.
        logit_scale: the multiplier exp(t') > 0 (scalar tensor or float; paper init 10).
        logit_bias: b (scalar tensor or float; paper init -10).
        gather_distributed: score against the texts of every process.

    Returns:
        Scalar: this process's images' summed pair losses divided by its B images.
    """
    check_pair(image_embeddings, text_embeddings, "image_embeddings", "text_embeddings")
    images, texts = normalized(image_embeddings), normalized(text_embeddings)
    all_texts = gather_with_grad(texts) if gather_distributed else texts  # (N, D)
    logits = logit_scale * images @ all_texts.T + logit_bias  # (B, N)
    local_rows = images.shape[0]
    signs = -torch.ones_like(logits)
    positives = global_row_indices(local_rows, gather_distributed, images.device)
    signs[torch.arange(local_rows, device=images.device), positives] = 1.0
    return -F.logsigmoid(signs * logits).sum() / local_rows
