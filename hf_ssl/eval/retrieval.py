"""Image-text retrieval recall@k (image -> text and text -> image) from joint embeddings.

The protocol of CLIP's Flickr30k / MS-COCO evaluation (Radford et al. 2021, arXiv:2103.00020,
section 3.1.6, following Karpathy & Fei-Fei 2015): every image of a held-out split queries every
caption and every caption queries every image; recall@k is the fraction of queries with a correct
item among the k highest-scored ones. An image may have several captions (any of them is a hit);
identical caption strings are merged into one text that is correct for every image it describes
(bundled data, template captions), so a duplicate never competes with itself. Ties with a wrong
item count against the query (a model that maps everything to one point scores 0, not 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from hf_ssl.text.tokenizer import caption_texts

from .data import DataSelection, load_labelled_split
from .protocol import EvaluationProtocol, register_protocol
from .zero_shot import embed_images, embed_texts, load_image_text_model

DEFAULT_RECALL_KS = (1, 5, 10)


def _first_hit_ranks(similarity: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Per query row: how many wrong items score at least as high as its best correct item.

    Args:
        similarity: ``(Q, K)`` scores of Q queries against K items.
        positives: ``(Q, K)`` bool, True where the item is correct for the query (>= 1 per row).
    """
    best_positive = similarity.masked_fill(~positives, float("-inf")).amax(dim=1, keepdim=True)  # (Q, 1)
    return ((similarity >= best_positive) & ~positives).sum(dim=1)  # (Q,)


def retrieval_recall(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    positives: torch.Tensor,
    ks: Sequence[int] = DEFAULT_RECALL_KS,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@k in both directions.

    Args:
        image_embeddings: ``(N, P)`` L2-normalised.
        text_embeddings: ``(M, P)`` L2-normalised.
        positives: ``(N, M)`` bool, ``positives[i, j]`` when text j describes image i; every image and
            every text needs at least one.
        ks: the k values.
        chunk_size: queries scored at once (memory).

    Returns:
        ``{"image_to_text_recall@k": ..., "text_to_image_recall@k": ...}`` for every k, in [0, 1].
    """
    if positives.shape != (image_embeddings.shape[0], text_embeddings.shape[0]):
        raise ValueError(f"positives must be (N images, M texts) = ({image_embeddings.shape[0]}, "
                         f"{text_embeddings.shape[0]}), got {tuple(positives.shape)}")
    if not bool(positives.any(dim=1).all()) or not bool(positives.any(dim=0).all()):
        raise ValueError("every image needs at least one matching text and every text at least one image")
    if any(k < 1 for k in ks):
        raise ValueError(f"recall ks must be >= 1, got {list(ks)}")
    positives = positives.bool()
    ranks = {}
    for direction, queries, items, matches in (
        ("image_to_text", image_embeddings, text_embeddings, positives),
        ("text_to_image", text_embeddings, image_embeddings, positives.T),
    ):
        ranks[direction] = torch.cat([
            _first_hit_ranks(queries[start : start + chunk_size].float() @ items.float().T, matches[start : start + chunk_size])
            for start in range(0, queries.shape[0], chunk_size)
        ])
    return {f"{direction}_recall@{k}": float((rank < k).double().mean()) for direction, rank in ranks.items() for k in ks}


def caption_positives(captions_per_image: Sequence[Sequence[str]]) -> tuple[list[str], torch.Tensor]:
    """The distinct caption strings and which image each describes.

    Args:
        captions_per_image: the captions of each of N images (each non-empty).

    Returns:
        ``(texts, positives)``: M distinct strings in first-seen order and the ``(N, M)`` bool matrix.
    """
    index: dict[str, int] = {}
    pairs = []
    for image_index, captions in enumerate(captions_per_image):
        if not captions:
            raise ValueError(f"image {image_index} has no caption")
        for caption in captions:
            pairs.append((image_index, index.setdefault(caption, len(index))))
    positives = torch.zeros(len(captions_per_image), len(index), dtype=torch.bool)
    rows, columns = zip(*pairs)
    positives[list(rows), list(columns)] = True
    return list(index), positives


@dataclass(frozen=True)
class RetrievalSettings:
    """Where the captions are, and the k of recall@k."""

    caption_column: str = field(default="caption", metadata={"aliases": ("--caption_column",),
                                                             "help": "the test split's caption column"})
    recall_ks: tuple[int, ...] = field(default=DEFAULT_RECALL_KS, metadata={"help": "k of recall@k"})


class RetrievalProtocol(EvaluationProtocol):
    name = "retrieval"
    title = "Retrieval"
    description = "image-to-text and text-to-image recall@k on the test split's captions (image-text models)"
    settings_class = RetrievalSettings
    image_text = True

    def evaluate_folder(self, model_path: str, selection: DataSelection, settings: RetrievalSettings, random_init: bool,
                        seed: int) -> dict:
        model, tokenizer, image_processor = load_image_text_model(model_path, random_init, seed)
        split = load_labelled_split(selection.dataset_name, selection.test_split, selection.image_column,
                                    settings.caption_column, selection.max_samples)
        captions = [caption_texts(cell) for cell in split[settings.caption_column]]
        kept = [index for index, texts in enumerate(captions) if texts]
        if not kept:
            raise ValueError(f"column {settings.caption_column!r} of split {selection.test_split!r} holds no caption text")
        texts, positives = caption_positives([captions[index] for index in kept])
        image_embeddings = embed_images(model, image_processor, split.select(kept)[selection.image_column])
        metrics = retrieval_recall(image_embeddings, embed_texts(model, tokenizer, texts), positives, settings.recall_ks)
        return {**metrics, "task_type": "image-text-retrieval", "num_images": len(kept), "num_texts": len(texts)}

    def details(self, settings: RetrievalSettings) -> dict:
        return {}


RETRIEVAL = register_protocol(RetrievalProtocol())

__all__ = ["DEFAULT_RECALL_KS", "RetrievalSettings", "caption_positives", "retrieval_recall"]
