"""Each command's flags, in process: a mistake is one line naming the fix, help lists choices and says each default once."""

from __future__ import annotations

import pytest

from hf_ssl.cli import analyze, evaluate, push
from hf_ssl.command_line import unrecognized_arguments_message
from hf_ssl.training import ConfigurationError, parse_arguments


def test_a_misspelt_pretrain_flag_is_one_error_naming_the_close_match():
    with pytest.raises(ConfigurationError, match=r"^unrecognized argument --max_stepz \(did you mean --max_steps\?\)$"):
        parse_arguments(["--max_stepz", "5"])
    with pytest.raises(ConfigurationError, match=r"unrecognized argument --max_stepz \(did you mean --max_steps\?\)"):
        parse_arguments(["--max_stepz=5"])


def test_a_flag_of_another_method_says_which_method_has_it():
    with pytest.raises(ConfigurationError, match="--local_crops_number: it is a flag of --method dino / dinov2, not of --method simclr"):
        parse_arguments(["--local_crops_number", "4"])
    parse_arguments(["--method", "dino", "--local_crops_number", "4"])


def test_a_bad_value_is_the_one_line_error_not_the_usage_block():
    with pytest.raises(ConfigurationError, match="--max_steps.*invalid int value: 'many'"):
        parse_arguments(["--max_steps", "many"])


def test_unrecognized_arguments_message_without_a_close_match_or_flag():
    assert unrecognized_arguments_message(["--zzz"], ["--max_steps"]) == "unrecognized argument --zzz"
    assert "extra values" in unrecognized_arguments_message(["surplus"], ["--max_steps"])


def _help(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_request:
        main(argv)
    assert exit_request.value.code == 0
    return capsys.readouterr().out


def test_pretrain_help_names_the_command_lists_choices_and_each_default_once(capsys):
    text = _help(parse_arguments, ["--help"], capsys)
    assert text.startswith("usage: hf-ssl pretrain ")
    assert "--method {barlow_twins,beit,byol,dino," in text and "--preset {beit-base," in text
    assert "resnet-micro" in text  # every backbone preset
    flat = " ".join(text.split())
    assert "(default: None)" not in flat and "(default: the recipe's). (default" not in flat
    assert "same as --cpu_allocator_cache false" in flat
    assert "(default: 0)" in flat  # --seed: a default the help text does not state itself


@pytest.mark.parametrize("module, argv, prog", [
    (evaluate, ["--help"], "hf-ssl evaluate"),
    (push, ["--help"], "hf-ssl push"),
])
def test_sub_command_usage_names_the_command(module, argv, prog, capsys):
    assert _help(module.parse_arguments, argv, capsys).startswith(f"usage: {prog} ")


def test_analyze_usage_names_the_command(capsys):
    assert analyze.main(["attention", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: hf-ssl analyze attention ")


@pytest.mark.parametrize("main, argv, message", [
    (evaluate.main, ["--modle", "x"], "error: the following arguments are required: --model"),
    (evaluate.main, ["--model", "runs/x", "--protocl", "knn"], "error: unrecognized argument --protocl (did you mean --protocol?)"),
    (analyze.main, ["attention", "--model", "m", "--out", "o", "--maass", "0.5"], "error: unrecognized argument --maass (did you mean --mass?)"),
    (push.main, ["runs/x"], "error: the following arguments are required: --repo_id"),
])
def test_argparse_mistakes_are_one_line_and_exit_2(main, argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_request:
        code = main(argv)
        raise SystemExit(code)
    assert exit_request.value.code == 2
    assert capsys.readouterr().err.splitlines() == [message]
