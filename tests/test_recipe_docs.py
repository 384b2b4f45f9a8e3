"""docs/recipes.md is generated from the recipes; it must match what the code says today."""

from pathlib import Path

import hf_ssl  # noqa: F401  (registers the recipes)
from hf_ssl.recipes import get_recipe
from hf_ssl.cli.recipe_docs import render_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"


def test_committed_recipes_md_is_in_sync_with_the_recipes():
    assert DOCS.read_text() == render_markdown(), (
        "docs/recipes.md is out of date: run `python -m hf_ssl.cli.recipe_docs > docs/recipes.md`"
    )


def test_every_masked_recipe_documents_its_sources_and_presets():
    text = render_markdown()
    for method in ("beit", "mae", "simmim", "splitmask"):
        recipe = get_recipe(method)
        assert f"## {recipe.card.title} (`--method {method}`)" in text
        assert len(recipe.published_settings) >= 8
        assert all(row.source and row.published for row in recipe.published_settings)
        for preset in recipe.presets:
            assert f"`{preset.name}`" in text
    for name in ("beit-base", "mae-base", "simmim-vit-base", "simmim-swin-base"):
        assert f"`{name}`" in text


def test_the_hf_ssl_column_reads_the_code():
    """Change a default and the generated table changes with it (no hand-written hf-ssl column)."""
    import dataclasses

    recipe = get_recipe("mae")
    original = recipe.optimizer
    try:
        type(recipe).optimizer = dataclasses.replace(original, base_learning_rate=1e-3)
        assert "0.001 x batch / 256" in render_markdown()
    finally:
        type(recipe).optimizer = original
