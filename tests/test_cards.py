"""Model cards: Hub metadata, model-index round trip, figures, validation against the local Hub API."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard, constants

from hf_ssl.hub import add_remote_code, write_model_card
from run_folders import EVAL_RESULTS, tiny_splitmask_run
from hub_server import HubServer


@pytest.fixture(scope="module")
def carded_run(tmp_path_factory):
    run_dir = tiny_splitmask_run(tmp_path_factory.mktemp("cards") / "splitmask-tiny", EVAL_RESULTS)
    add_remote_code(run_dir)  # as the end of a run does
    write_model_card(run_dir, repo_id="org/splitmask-tiny")
    return run_dir


def test_card_metadata_and_model_index_round_trip(carded_run):
    card = ModelCard.load(carded_run / "README.md")
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-feature-extraction"
    assert data.license == "apache-2.0"
    assert {"hf-ssl", "splitmask", "self-supervised-learning"} <= set(data.tags)
    assert data.datasets is None  # bundled data is not a Hub dataset id
    assert data.model_name == "splitmask-tiny"
    results = {(r.metric_name, r.metric_type): (r.metric_value, r.dataset_split) for r in data.eval_results}
    assert results == {
        ("k-NN top-1 accuracy", "accuracy"): (0.8125, "test"),
        ("k-NN top-5 accuracy", "top-5-accuracy"): (0.975, "test"),
        ("Linear probe, 10% labels top-1 accuracy", "accuracy"): (0.75, "test"),
        ("Linear probe, 10% labels top-5 accuracy", "top-5-accuracy"): (0.95, "test"),
    }
    assert {r.task_type for r in data.eval_results} == {"image-classification"}
    assert {r.dataset_type for r in data.eval_results} == {"sklearn-digits"}
    assert ModelCard(str(card)).data.to_dict() == data.to_dict()


def test_card_prose_comes_from_the_run(carded_run):
    text = (carded_run / "README.md").read_text()
    for expected in ("SplitMask", "hidden size 32, 1 layers", "| Optimizer steps | 5 |", "2 CPU cores (test)",
                     "AutoModel.from_pretrained(\"org/splitmask-tiny\", trust_remote_code=True)",
                     "org/splitmask-tiny-backbone", "| k-NN | all |", "81.25", "## Limitations", "loss_curve.png"):
        assert expected in text, expected
    assert (carded_run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (carded_run / "reconstruction.png").is_file()  # SplitMask: hidden patches drawn as predicted tokens
    backbone = ModelCard.load(carded_run / "backbone" / "README.md")
    assert backbone.data.base_model == "org/splitmask-tiny"
    assert "ViTModel" in backbone.text


def test_card_validates_against_local_hub(carded_run, monkeypatch):
    with HubServer(lifetime_s=30) as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # only 127.0.0.1 is reachable
        ModelCard.load(carded_run / "README.md").validate()
        ModelCard.load(carded_run / "backbone" / "README.md").validate()
        broken = ModelCard("---\nlicense: apache-2.0\ndatasets:\n- 1\n---\n\n# broken\n")
        with pytest.raises(ValueError, match="datasets"):
            broken.validate()
        assert [path for _, path, _ in hub.requests].count("/api/validate-yaml") == 3


def test_card_without_evaluation_says_how_to_evaluate(tmp_path):
    run_dir = tiny_splitmask_run(tmp_path / "run")
    card = ModelCard.load(write_model_card(run_dir))
    assert card.data.eval_results is None
    assert "hf-ssl evaluate --model" in card.text
    assert f'AutoModel.from_pretrained("{run_dir}")' in card.text


def test_card_metadata_names_no_local_path(tmp_path):
    """A card is public: the data folder and the evaluation dataset of a run on local files used to
    reach the Hub metadata as absolute paths (/home/<user>/...)."""
    import json

    local_results = {"knn": {**EVAL_RESULTS["knn"], "dataset": str(tmp_path / "labelled-scans")}}
    run_dir = tiny_splitmask_run(tmp_path / "run", local_results)
    arguments = json.loads((run_dir / "training_args.json").read_text())
    for dataset_name in (str(tmp_path / "scans"), "./scans", "parquet", "my-org/scans"):
        arguments["dataset_name"] = dataset_name
        (run_dir / "training_args.json").write_text(json.dumps(arguments))
        card = ModelCard.load(write_model_card(run_dir, make_figures=False))
        assert card.data.datasets == (["my-org/scans"] if dataset_name == "my-org/scans" else None), dataset_name
        assert {result.dataset_name for result in card.data.eval_results} == {"labelled-scans"}
        assert str(tmp_path) not in str(card.data.to_dict()), dataset_name
