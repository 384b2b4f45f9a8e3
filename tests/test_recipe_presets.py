"""``--preset NAME`` (earlier ``--recipe``): published configurations under YAML and explicit flags."""

import dataclasses
import json

import pytest
import torch

import hf_ssl  # noqa: F401  (registers the recipes)
from hf_ssl.recipes import available_methods, get_recipe
from hf_ssl.training.arguments import (
    ConfigurationError,
    PretrainingArguments,
    build_context,
    find_preset,
    parse_arguments,
    resolve_arguments,
    validate_arguments,
)

EXPECTED_PRESETS = {
    "beit": {"beit-base"},
    "mae": {"mae-vit-base-1600ep", "mae-vit-large-800ep"},
    "simmim": {"simmim-vit-base-800ep", "simmim-swin-base-800ep", "simmim-swin-base-100ep"},
    "splitmask": {"splitmask-vit-base"},
}


def all_presets():
    return [(method, preset) for method in available_methods() for preset in get_recipe(method).presets]


def test_published_presets_exist_and_names_are_unique():
    names = [preset.name for _, preset in all_presets()]
    assert len(names) == len(set(names))
    for method, expected in EXPECTED_PRESETS.items():
        assert {preset.name for preset in get_recipe(method).presets} == expected


@pytest.mark.parametrize("method, preset", all_presets(), ids=lambda value: getattr(value, "name", value))
def test_every_preset_parses_and_builds_its_model(method, preset):
    arguments, method_arguments = parse_arguments(["--preset", preset.name, "--max_steps", "1000",
                                                   "--dataset_name", "org/images"])
    assert arguments.method == method and arguments.preset == preset.name
    assert preset.arguments.get("total_batch_size"), "a preset states the published batch size"
    resolved = resolve_arguments(arguments)
    backbone = validate_arguments(resolved, method_arguments)
    recipe = get_recipe(method)
    with torch.device("meta"):
        model = recipe.build_model(build_context(resolved, method_arguments, recipe, backbone))
    for name, value in preset.model_overrides.items():
        assert getattr(model.config, name) == value, name
    assert model.config.image_size == preset.arguments["image_size"]


def test_mae_preset_values_and_linear_scaling():
    arguments, _ = parse_arguments(["--preset", "mae-vit-base-1600ep", "--max_steps", "16000"])
    assert (arguments.method, arguments.model, arguments.image_size, arguments.total_batch_size) == ("mae", "vit-base", 224, 4096)
    assert arguments.learning_rate == pytest.approx(1.5e-4 * 4096 / 256)
    assert arguments.warmup_steps == 400  # 40 of 1600 epochs
    assert json.loads(arguments.model_overrides) == {"mask_ratio": 0.75, "norm_pix_loss": True}
    # a smaller batch scales the learning rate down by the same rule
    smaller, _ = parse_arguments(["--preset", "mae-vit-base-1600ep", "--max_steps", "100", "--total_batch_size", "512"])
    assert smaller.learning_rate == pytest.approx(1.5e-4 * 512 / 256)


def test_simmim_presets_set_schedule_and_encoder():
    arguments, method_arguments = parse_arguments(["--preset", "simmim-swin-base-100ep", "--max_steps", "1000"])
    assert (arguments.model, arguments.image_size) == ("swin-base", 192)
    assert arguments.learning_rate == pytest.approx(2e-4 * 2048 / 512) and arguments.warmup_steps == 100
    assert method_arguments.learning_rate_schedule == "cosine"
    vit, vit_arguments = parse_arguments(["--preset", "simmim-vit-base-800ep"])
    assert vit.learning_rate == pytest.approx(1e-4 * 2048 / 512) and vit.warmup_steps is None  # the recipe's 10/800
    assert vit_arguments.learning_rate_schedule == "multistep" and vit_arguments.learning_rate_milestones == [0.875]
    overrides = json.loads(vit.model_overrides)
    assert overrides["encoder_type"] == "beit" and overrides["layer_scale_init_value"] == 0.1


def test_beit_and_splitmask_presets():
    beit, _ = parse_arguments(["--preset", "beit-base"])
    assert (beit.method, beit.model, beit.total_batch_size, beit.learning_rate) == ("beit", "vit-base", 2048, 1.5e-3)
    splitmask, _ = parse_arguments(["--preset", "splitmask-vit-base", "--max_steps", "3000"])
    assert splitmask.warmup_steps == 100 and splitmask.learning_rate == 1.5e-3
    overrides = json.loads(splitmask.model_overrides)
    assert overrides["decoder_num_hidden_layers"] == 2 and overrides["tokenizer_vocab_size"] == 8192
    assert overrides["use_projection_head"] is False


def test_explicit_flags_and_yaml_win_over_the_preset(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("total_batch_size: 1024\nimage_size: 160\n")
    arguments, _ = parse_arguments(["--preset", "mae-vit-base-1600ep", "--config", str(config), "--image_size", "192",
                                    "--learning_rate", "1e-3", "--warmup_steps", "7", "--max_steps", "50",
                                    "--model_overrides", '{"mask_ratio": 0.6}'])
    assert arguments.total_batch_size == 1024  # YAML over the preset
    assert arguments.image_size == 192  # flag over YAML
    assert arguments.learning_rate == 1e-3 and arguments.warmup_steps == 7
    assert json.loads(arguments.model_overrides) == {"mask_ratio": 0.6, "norm_pix_loss": True}  # merged, user wins
    from_yaml = tmp_path / "preset.yaml"
    from_yaml.write_text("preset: beit-base\n")
    arguments, _ = parse_arguments(["--config", str(from_yaml)])
    assert arguments.method == "beit" and arguments.model == "vit-base"


def test_the_earlier_name_recipe_still_selects_a_preset(tmp_path):
    """``--recipe`` and a YAML ``recipe:`` key, as written before presets had their own name."""
    expected, _ = parse_arguments(["--preset", "beit-base"])
    for argv in (["--recipe", "beit-base"], ["--recipe=beit-base"]):
        assert parse_arguments(argv)[0] == expected
    legacy_yaml = tmp_path / "run.yaml"
    legacy_yaml.write_text("recipe: beit-base\n")
    from_yaml, _ = parse_arguments(["--config", str(legacy_yaml)])
    assert dataclasses.replace(from_yaml, config=None) == expected


def test_preset_errors_are_configuration_errors():
    with pytest.raises(ConfigurationError, match="not a published configuration; available: beit-base"):
        parse_arguments(["--preset", "beit-huge"])
    with pytest.raises(ConfigurationError, match="is a mae configuration, not --method simmim"):
        parse_arguments(["--preset", "mae-vit-base-1600ep", "--method", "simmim"])
    with pytest.raises(ConfigurationError, match="give --max_steps"):
        parse_arguments(["--preset", "mae-vit-base-1600ep"])
    assert find_preset("beit-base")[0] == "beit"


def test_cli_rejects_an_unknown_recipe_with_exit_code_2(capsys):
    from hf_ssl.cli.pretrain import main

    assert main(["--preset", "nope"]) == 2
    assert "not a published configuration" in capsys.readouterr().err


def test_no_preset_leaves_arguments_untouched():
    arguments, _ = parse_arguments(["--method", "mae"])
    assert arguments.preset is None and arguments.learning_rate is None and arguments.model_overrides is None
    assert PretrainingArguments().preset is None
