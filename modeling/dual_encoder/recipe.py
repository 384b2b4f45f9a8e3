"""CLIP-style dual encoder recipe: `--method dual_encoder` on any image backbone + a text tower.

CLIP (Radford et al. 2021, arXiv:2103.00020): contrastive image-caption training, symmetric
cross-entropy over the global batch, learned temperature initialised at 0.07 and clipped at 100
(exp(t) <= 100, clamped after every optimizer step as open_clip's training loop does). SigLIP
(Zhai et al. 2023, arXiv:2303.15343) with ``--loss_type sigmoid``. LiT (Zhai et al. 2022,
arXiv:2111.07991) with ``--lock_image_tower``: a pre-trained image tower (``--model`` a folder
with weights, e.g. an hf-ssl run's ``backbone/``) stays frozen, the text tower learns to match it.

Text side without any download: ``--text_model`` is a local transformers text model folder (its
tokenizer and weights are used) or a preset (``text-micro``, ``bert-tiny`` ... ``bert-base``: a BERT
built from a config) whose byte-level BPE (or word-level) tokenizer is trained on the run's
captions before the model is built (`prepare_inputs`). The run folder gets the tokenizer and a
`VisionTextDualEncoderProcessor` (`save_extra_files`), so ``pipeline("zero-shot-image-classification",
model=run_dir)`` works after ``import hf_ssl``, and, for transformers image towers, a
``vision_text_dual_encoder/`` sub-folder in transformers' own `VisionTextDualEncoderModel` format
that loads without hf-ssl.

Optimisation (CLIP paper, section 2.5 and appendix F): AdamW, betas (0.9, 0.98), weight decay 0.2
on weights (not on gains, biases and the logit scale), cosine schedule with warm-up, no gradient
clipping. CLIP used learning rate 5e-4 at batch 32,768 and open_clip uses it unchanged at a few
thousand, so the linear scaling rule would give far too small a rate at small batches: the base
rate is anchored at batch 256 (the general default); set ``--learning_rate`` for other sizes.

Bundled run (digits with class-name captions, vit-micro + bert-tiny, batch 64): the common bundled
learning rate 5e-4 and 1,200 steps, chosen by zero-shot accuracy on the held-out split
(docs/small-image-defaults.md). Every run first sits on the uniform solution (image embeddings
close together: the loop's collapse warning fires) for about 50 steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedModel, VisionTextDualEncoderProcessor

from hf_ssl.backbones import default_image_processor
from hf_ssl.data import DatasetConfigurationError
from hf_ssl.recipes.base import BuildContext, MethodCard, OptimizerDefaults, Recipe, StepContext, register_recipe
from hf_ssl.safe_loading import load_pretrained
from hf_ssl.text import (
    CLIP_CONTEXT_LENGTH,
    ImageCaptionTransform,
    byte_level_tokenizer,
    caption_texts,
    resolve_text_model,
    train_caption_tokenizer,
)

from . import BackboneForDualEncoder, DualEncoderConfig

logger = logging.getLogger(__name__)

# Sub-folder of the run folder holding transformers' own VisionTextDualEncoderModel + processor.
PLAIN_MODEL_FOLDER = "vision_text_dual_encoder"


@dataclass
class DualEncoderArguments:
    """Flags of ``--method dual_encoder``."""

    caption_column: str = field(
        default="caption",
        metadata={"help": "Column with each image's caption: a string, or a list of captions (one is drawn per sample). "
                          "Rows without caption text are skipped and counted."},
    )
    text_model: str = field(
        default="bert-tiny",
        metadata={"help": "Text tower: a local transformers text model folder (with its tokenizer; its weights are "
                          "used) or a preset built from a config with a tokenizer trained on the captions: text-micro, "
                          "bert-tiny, bert-mini, bert-small, bert-medium, bert-base."},
    )
    loss_type: Literal["softmax", "sigmoid"] = field(
        default="softmax",
        metadata={"help": "softmax: CLIP's symmetric cross-entropy over the global batch; sigmoid: SigLIP's pairwise "
                          "loss with a learned bias, which stays well defined at small batches."},
    )
    projection_dim: int = field(default=512, metadata={"help": "Width of the joint image-text embedding (CLIP ViT-B: 512)."})
    lock_image_tower: bool = field(
        default=False,
        metadata={"help": "LiT: freeze the (pre-trained) image tower and its projection; only the text side learns."},
    )
    unlock_image_projection: bool = field(
        default=False, metadata={"help": "With --lock_image_tower: still train the image projection."}
    )
    max_caption_length: int = field(default=32, metadata={"help": "Caption length in tokens (padded / truncated)."})
    tokenizer: Literal["bpe", "wordlevel"] = field(
        default="bpe",
        metadata={"help": "Tokenizer trained for a preset text tower: byte-level BPE (encodes any label name) or "
                          "word-level (unseen words become [UNK])."},
    )
    tokenizer_vocab_size: int = field(default=8192, metadata={"help": "Largest vocabulary of the trained tokenizer."})


def _folder_tokenizer(name: str):
    """A text model folder's tokenizer; captions are padded to a fixed length, so it needs a pad token."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise ValueError(f"--text_model {name}: no tokenizer could be loaded ({str(error).splitlines()[0]})") from error
    if tokenizer.pad_token is None:
        raise ValueError(f"--text_model {name}: its tokenizer has no padding token (captions are padded to "
                         "--max_caption_length); set one with tokenizer.pad_token = ... and save_pretrained the folder")
    return tokenizer


class DualEncoderRecipe(Recipe):
    name = "dual_encoder"
    description = "CLIP-style image-text dual encoder: contrastive (or SigLIP) training on image-caption pairs, zero-shot"
    registrations = (
        (DualEncoderConfig, BackboneForDualEncoder,
         ("AutoModel", "AutoModelForPreTraining", "AutoModelForZeroShotImageClassification")),
    )
    card = MethodCard(
        title="CLIP-style dual encoder",
        description=(
            "An image tower and a text tower are trained together on image-caption pairs so that an image and its "
            "caption land close in one embedding space (CLIP, Radford et al. 2021, arXiv:2103.00020; optionally "
            "SigLIP's sigmoid loss, Zhai et al. 2023, arXiv:2303.15343, and LiT's locked image tower, Zhai et al. "
            "2022, arXiv:2111.07991). New images are classified from label names alone by comparing them with "
            "prompts such as \"a photo of a {label}.\"."
        ),
        limitation="Zero-shot accuracy depends on how close the label prompts are to the training captions; the "
                   "model only knows the concepts its captions name.",
        tags=("clip", "image-text", "zero-shot-image-classification", "contrastive-learning"),
    )
    arguments_class = DualEncoderArguments
    optimizer = OptimizerDefaults(
        base_learning_rate=5e-4,
        reference_batch_size=256,
        weight_decay=0.2,
        betas=(0.9, 0.98),
        warmup_fraction=0.05,
        min_learning_rate_ratio=0.0,
        gradient_clip_norm=None,
    )
    default_model = "vit-small"
    default_image_size = 224
    supported_backbones = ("any",)
    prepares_inputs = True

    def columns(self, arguments, method_arguments) -> dict[str, str]:
        method_arguments = method_arguments or self.method_arguments_defaults()
        return {"image": arguments.image_column, "caption": method_arguments.caption_column}

    # ----- text side: tokenizer and tower ---------------------------------------------------

    def _method_arguments(self, context: BuildContext) -> DualEncoderArguments:
        return context.method_arguments or self.method_arguments_defaults()

    def prepare_inputs(self, context: BuildContext, rows) -> None:
        """Train the caption tokenizer of a preset text tower on the first training rows (every
        process reads the same rows and the training is deterministic, so every process gets the
        same vocabulary); load a text model folder's own tokenizer otherwise."""
        arguments = self._method_arguments(context)
        spec = resolve_text_model(arguments.text_model)
        if not spec.is_preset:
            context.artifacts["tokenizer"] = _folder_tokenizer(spec.name)
            return
        captions = [text for row in rows for text in caption_texts(row["caption"])]
        if not captions:
            raise DatasetConfigurationError(
                f"--caption_column {context.columns['caption']!r} holds no caption text in the first training rows "
                "(expected a string or a list of strings per image)"
            )
        context.artifacts["tokenizer"] = train_caption_tokenizer(
            captions,
            kind=arguments.tokenizer,
            vocab_size=arguments.tokenizer_vocab_size,
            model_max_length=max(arguments.max_caption_length, CLIP_CONTEXT_LENGTH),
        )
        logger.info("Caption tokenizer (%s) trained on %d captions: %d tokens", arguments.tokenizer, len(captions),
                    len(context.artifacts["tokenizer"]))

    def tokenizer(self, context: BuildContext):
        """The run's tokenizer: from `prepare_inputs`, else the text model folder's, else (a preset
        before any caption was read: tests, the Python API) the untrained byte-level BPE."""
        if "tokenizer" not in context.artifacts:
            spec = resolve_text_model(self._method_arguments(context).text_model)
            context.artifacts["tokenizer"] = byte_level_tokenizer() if spec.is_preset else _folder_tokenizer(spec.name)
        return context.artifacts["tokenizer"]

    def build_transform(self, context: BuildContext) -> ImageCaptionTransform:
        return ImageCaptionTransform(
            self.tokenizer(context),
            self._method_arguments(context).max_caption_length,
            context.image_size,
            context.image_mean,
            context.image_std,
        )

    # ----- model ----------------------------------------------------------------------------

    def build_model(self, context: BuildContext) -> BackboneForDualEncoder:
        arguments = self._method_arguments(context)
        if arguments.max_caption_length < 3:
            raise ValueError(f"--max_caption_length must be >= 3 ([CLS] + a token + [SEP]), got {arguments.max_caption_length}")
        spec = resolve_text_model(arguments.text_model)
        tokenizer = self.tokenizer(context)
        text_config = spec.config(len(tokenizer), arguments.max_caption_length, tokenizer.pad_token_id or 0)
        if len(tokenizer) > text_config.vocab_size:
            raise ValueError(f"--text_model {spec.name}: the tokenizer has {len(tokenizer)} tokens, the model's "
                             f"embedding table {text_config.vocab_size}")
        if arguments.lock_image_tower and context.backbone.weights is None:
            logger.warning("--lock_image_tower with a randomly initialised image tower (--model %s has no weights): "
                           "the text side will learn to match random image features", context.backbone.name)
        settings = dict(
            backbone_config=context.backbone.nested(),
            text_config=text_config.to_dict(),
            projection_dim=arguments.projection_dim,
            loss_type=arguments.loss_type,
            lock_image_tower=arguments.lock_image_tower,
            unlock_image_projection=arguments.unlock_image_projection,
            image_size=context.image_size,
        )
        settings.update(context.model_overrides)
        model = BackboneForDualEncoder(DualEncoderConfig(**settings))
        if spec.weights is not None and model.logit_scale.device.type != "meta":
            model.text_model.load_state_dict(load_pretrained(spec.weights).state_dict(), strict=True)
            logger.info("Text tower initialised from %s", spec.weights)
        return model

    # ----- optimisation hooks ---------------------------------------------------------------

    def after_optimizer_step(self, model: PreTrainedModel, step: StepContext) -> None:
        """exp(t) <= 100 (CLIP), applied to the parameter after every step as open_clip does."""
        model.clamp_logit_scale_()

    # ----- run folder -----------------------------------------------------------------------

    def save_extra_files(self, model: PreTrainedModel, context: BuildContext, output_dir) -> None:
        """Tokenizer + `VisionTextDualEncoderProcessor` next to the model, and transformers' plain
        `VisionTextDualEncoderModel` form in ``vision_text_dual_encoder/`` when the tower has one."""
        output_dir = Path(output_dir)
        if (output_dir / "preprocessor_config.json").is_file():
            image_processor = AutoImageProcessor.from_pretrained(str(output_dir))
        else:
            image_processor = default_image_processor(context.image_size, context.image_mean, context.image_std)
        processor = VisionTextDualEncoderProcessor(image_processor=image_processor, tokenizer=self.tokenizer(context))
        processor.save_pretrained(output_dir)
        try:
            plain = model.to_vision_text_dual_encoder()
        except ValueError as error:
            logger.info("No %s/ folder: %s", PLAIN_MODEL_FOLDER, error)
            return
        plain.save_pretrained(output_dir / PLAIN_MODEL_FOLDER)
        processor.save_pretrained(output_dir / PLAIN_MODEL_FOLDER)


DUAL_ENCODER = register_recipe(DualEncoderRecipe())

__all__ = ["DUAL_ENCODER", "DualEncoderArguments", "DualEncoderRecipe", "PLAIN_MODEL_FOLDER"]
