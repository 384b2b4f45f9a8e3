"""docs/recipes.md from the recipes: published value vs hf-ssl default vs source, per method.

    python -m hf_ssl.cli.recipe_docs > docs/recipes.md

Each masked-image-modeling recipe lists its `hf_ssl.recipes.published.PublishedSetting` rows
(``published_settings``): the published value and its source are written by hand next to the code;
the hf-ssl column is read from the recipe itself (its optimizer defaults, the model it builds for
the paper's backbone, its augmentation, its schedule), so the table cannot drift from the code
(tests/test_recipe_docs.py regenerates the file and compares).
"""

from __future__ import annotations

import json
import sys

from hf_ssl.recipes.published import number


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(item) for item in row) + " |" for row in rows]
    return lines


def _preset_rows(recipe) -> list[tuple[str, ...]]:
    rows = []
    for preset in recipe.presets:
        values = dict(preset.arguments)
        if preset.model_overrides:
            values["model_overrides"] = preset.model_overrides
        base = preset.base_learning_rate if preset.base_learning_rate is not None else recipe.optimizer.base_learning_rate
        reference = preset.reference_batch_size or recipe.optimizer.reference_batch_size
        values["learning_rate"] = f"{number(base)} x total_batch_size / {reference}"
        if preset.warmup_fraction is not None:
            values["warmup"] = f"{number(preset.warmup_fraction)} of --max_steps"
        settings = ", ".join(f"{key}={json.dumps(value) if isinstance(value, dict) else number(value)}"
                             for key, value in values.items())
        rows.append((f"`{preset.name}`", preset.description, settings, preset.source))
    return rows


INTRODUCTION = """\
# Published recipes of the masked-image-modeling methods

Generated from the recipes by `python -m hf_ssl.cli.recipe_docs > docs/recipes.md`; do not edit by
hand (tests/test_recipe_docs.py fails when this file and the code disagree).

`--method X` alone trains with the hf-ssl default column below; `--preset NAME` starts from a
published configuration (model, batch size, optimizer, schedule, model fields; the augmentation
is the method's own) and explicit flags (or `--config` YAML) win over it. The learning rate
always follows the linear scaling rule `learning_rate = base x total_batch_size / reference`
(unless `--learning_rate` is given), so a smaller batch gets a proportionally smaller rate.
Papers count epochs of ImageNet; a run counts optimizer steps: warm-up and decay points are
fractions of `--max_steps`, and N epochs of your data are `N x images / total_batch_size` steps.
The bundled 32-px run (no dataset given) keeps small-image settings: 8-px patches, a smaller
vocabulary and decoder, the bundled learning rate and, up to 64 px, the plain ViT instead of
BEiT's (measured on the digits, see `hf_ssl/recipes/vit_fields.py`).

Not reproduced anywhere: the dVAE tokenizer of BEiT (hf-ssl's BEiT and SplitMask predict the
tokens of a k-means patch tokenizer, the SplitMask paper); fine-tuning's mixup, cutmix, RandAugment and
random erasing (see the fine-tuning table at the end).
"""


def render_markdown() -> str:
    """The whole docs/recipes.md."""
    from hf_ssl.eval.finetune import finetune_presets
    from hf_ssl.recipes import available_methods, get_recipe

    lines = [INTRODUCTION]
    for method in available_methods():
        recipe = get_recipe(method)
        published = getattr(recipe, "published_settings", ())
        if not published:
            continue
        lines += [f"## {recipe.card.title} (`--method {method}`)", ""]
        lines += _table([(row.setting, row.published, row.hf_ssl(recipe), row.source) for row in published],
                        ("setting", "published", "hf-ssl default", "source"))
        lines.append("")
        notes = getattr(recipe, "documentation_notes", "")
        if notes:
            lines += [notes.strip(), ""]
        if recipe.presets:
            lines += ["Presets (`--preset NAME`):", ""]
            lines += _table(_preset_rows(recipe), ("--preset", "configuration", "sets", "source"))
            lines.append("")
    lines += ["## Fine-tuning presets (`hf-ssl evaluate --protocol finetune --finetune_preset NAME`)", ""]
    rows = []
    for preset in finetune_presets().values():
        rows.append((f"`{preset.name}`", number(preset.epochs), f"{number(preset.base_learning_rate)} x batch / "
                     f"{preset.reference_batch_size} (batch {preset.batch_size})", number(preset.layer_decay),
                     number(preset.drop_path_rate), number(preset.weight_decay), number(preset.warmup_fraction),
                     number(preset.min_learning_rate_ratio), number(preset.label_smoothing), preset.source))
    lines += _table(rows, ("--finetune_preset", "epochs", "learning rate", "layer decay", "drop path",
                           "weight decay", "warm-up", "final LR / peak", "label smoothing", "source"))
    lines += ["", "Explicit `--finetune_*` flags override a preset's values. Mixup, cutmix, RandAugment and random "
              "erasing of the published fine-tuning recipes are not implemented by `hf-ssl evaluate`.", ""]
    return "\n".join(lines)


def main() -> int:
    import hf_ssl  # noqa: F401  (registers every recipe)

    sys.stdout.write(render_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
