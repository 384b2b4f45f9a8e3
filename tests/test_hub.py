"""Push and load over real HTTP: uploads to tests/hub_server.py, downloads from olah (a Hub mirror).

Only 127.0.0.1 is contacted; both servers are stopped when a test ends (and by themselves later).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file

from hf_ssl.hub import PushError, UnsafeCheckpointError, load_backbone, load_pretrained, push_run_folder
from hf_ssl.hub.push import files_to_push
from hf_ssl.remote_code import remote_code_files
from hf_ssl.modeling.splitmask import SplitMaskConfig, ViTForSplitMask
from hub_server import HubServer, OlahMirror, free_port
from run_folders import EVAL_RESULTS, tiny_splitmask_run

SECRET = "hf_testsecret_0123456789abcdefABCDEF"
# The run folder plus the self-contained remote code: the method's files and the hf_ssl modules they use.
PUSHED_ROOT_FILES = {
    "README.md", "config.json", "model.safetensors", "preprocessor_config.json", "training_args.json",
    "training_log.jsonl", "eval_results.json", "loss_curve.png", "reconstruction.png",
} | set(remote_code_files(SplitMaskConfig, ViTForSplitMask))


@pytest.fixture
def local_hub(monkeypatch):
    """A running HubServer with huggingface_hub pointed at it and HF_TOKEN set to a known secret."""
    with HubServer(expected_token=SECRET, lifetime_s=120) as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # only 127.0.0.1 is reachable
        monkeypatch.setenv("HF_TOKEN", SECRET)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", "/nonexistent/token")  # no login cache in tests
        yield hub


def _local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _run_python(code: str, env: dict, timeout: int = 120) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON object on its last stdout line."""
    completed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _subprocess_env(**overrides) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1", **overrides)
    return env


# ---------------------------------------------------------------- safetensors only


def test_pickle_checkpoint_is_refused(tmp_path):
    run_dir = tiny_splitmask_run(tmp_path / "run")
    (run_dir / "model.safetensors").rename(tmp_path / "weights.safetensors")
    (run_dir / "pytorch_model.bin").write_bytes(b"not even opened")
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin"):
        load_pretrained(run_dir)
    (run_dir / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(run_dir)


def test_load_pretrained_and_backbone_from_a_run_folder(tmp_path):
    run_dir = tiny_splitmask_run(tmp_path / "run")
    model = load_pretrained(run_dir)
    backbone = load_backbone(run_dir)
    assert type(model).__name__ == "ViTForSplitMask" and type(backbone).__name__ == "ViTModel"
    exported, trained = backbone.state_dict(), model.get_backbone().state_dict()
    assert set(exported) - set(trained) == {"pooler.dense.weight", "pooler.dense.bias"}  # for AutoModel, untrained
    for name, tensor in trained.items():
        torch.testing.assert_close(exported[name], tensor, rtol=0, atol=0)


# ---------------------------------------------------------------- failed uploads


def test_failed_push_keeps_the_folder_and_says_how_to_retry(tmp_path, local_hub, monkeypatch):
    run_dir = tiny_splitmask_run(tmp_path / "run", EVAL_RESULTS)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_value")
    with pytest.raises(PushError) as bad_token:
        push_run_folder(run_dir, "org/splitmask-tiny", private=True, revision="v1")
    message = str(bad_token.value)
    assert "hf-ssl push " in message and "--repo_id org/splitmask-tiny --private --revision v1" in message
    assert "hf_wrong_token_value" not in message
    assert local_hub.repos == {}
    before = _local_files(run_dir)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(PushError, match="Nothing in the local folder was removed"):
        push_run_folder(run_dir, "org/splitmask-tiny")
    assert _local_files(run_dir) == before


# ---------------------------------------------------------------- round trip


@pytest.mark.slow
def test_push_then_download_through_olah(tmp_path, local_hub):
    run_dir = tiny_splitmask_run(tmp_path / "run", EVAL_RESULTS)
    result = push_run_folder(run_dir, "org/splitmask-tiny", private=True, revision="v1")
    assert result["repo_id"] == "org/splitmask-tiny" and result["backbone_repo_id"] == "org/splitmask-tiny-backbone"
    assert local_hub.authorized_requests > 0
    # v1 was branched from main (empty) and holds the upload; main stays empty
    assert local_hub.files("org/splitmask-tiny", "main") == {}
    received = local_hub.files("org/splitmask-tiny", "v1")
    received_backbone = local_hub.files("org/splitmask-tiny-backbone", "v1")
    local = _local_files(run_dir)
    assert set(received) == PUSHED_ROOT_FILES
    assert all(received[path] == local[path] for path in received)  # byte for byte
    assert received_backbone == {path[len("backbone/"):]: content for path, content in local.items()
                                 if path.startswith("backbone/")}
    assert local_hub.repos["org/splitmask-tiny"].private
    config = json.loads(received["config.json"])
    assert config["auto_map"] == {
        "AutoConfig": "configuration_splitmask.SplitMaskConfig",
        "AutoModel": "modeling_splitmask.ViTForSplitMask",
        "AutoModelForPreTraining": "modeling_splitmask.ViTForSplitMask",
    }
    # the token never lands in a written file (run folder, received files)
    for content in [*local.values(), *received.values(), *received_backbone.values()]:
        assert SECRET.encode() not in content

    # serve the pushed repos (their v1 branch) from olah
    for repo_id in ("org/splitmask-tiny", "org/splitmask-tiny-backbone"):
        local_hub.repos[repo_id].branches["main"] = local_hub.repos[repo_id].branches["v1"]
        local_hub.export_git_mirror(repo_id, tmp_path / "mirrors")
    with OlahMirror(tmp_path / "mirrors", tmp_path, "org/splitmask-tiny") as olah_url:
        cache = tmp_path / "hf-home"
        # 1. a fresh process that never imports hf_ssl: snapshot_download, trust_remote_code, exported encoder
        downloaded = _run_python(textwrap.dedent(f"""
            import json, sys
            from huggingface_hub import snapshot_download
            from safetensors.torch import save_file
            from transformers import AutoModel, AutoModelForImageClassification, pipeline
            from PIL import Image
            folder = snapshot_download("org/splitmask-tiny")
            model = AutoModel.from_pretrained("org/splitmask-tiny", trust_remote_code=True)
            remote_class = type(model).__module__
            save_file({{k: v.contiguous() for k, v in model.state_dict().items()}}, "{tmp_path}/remote.safetensors")
            encoder = AutoModel.from_pretrained("org/splitmask-tiny-backbone")
            classifier = AutoModelForImageClassification.from_pretrained("org/splitmask-tiny-backbone", num_labels=10)
            # olah answers 401 (not 404) for files a mirrored repo lacks, and AutoImageProcessor first
            # probes processor_config.json, so the pipeline runs on the downloaded backbone snapshot.
            extractor = pipeline("image-feature-extraction", model=snapshot_download("org/splitmask-tiny-backbone"))
            features = extractor(Image.new("RGB", (40, 40), (120, 30, 200)))
            print(json.dumps({{"folder": folder, "remote_class": remote_class, "encoder": type(encoder).__name__,
                               "classifier": type(classifier).__name__, "feature_shape": [len(features), len(features[0]), len(features[0][0])]}}))
        """), _subprocess_env(HF_ENDPOINT=olah_url, HF_HOME=str(cache)))
        assert downloaded["remote_class"].startswith("transformers_modules.")
        assert downloaded["encoder"] == "ViTModel" and downloaded["classifier"] == "ViTForImageClassification"
        assert downloaded["feature_shape"] == [1, 1 + 64, 32]
        snapshot = Path(downloaded["folder"])
        assert _local_files(snapshot) == received  # identical files
        reference = load_pretrained(run_dir).state_dict()  # in-memory names (transformers 5 renames on load)
        remote = load_file(str(tmp_path / "remote.safetensors"))
        assert remote.keys() == reference.keys()
        assert all(torch.equal(remote[name], reference[name]) for name in reference)  # identical weights

    # 2. offline, from the HF cache layout only, with the registered hf-ssl classes
    offline = _run_python(textwrap.dedent(f"""
        import json
        import hf_ssl, torch
        from transformers import AutoModel
        from hf_ssl.hub import load_pretrained
        from safetensors.torch import load_file
        model = AutoModel.from_pretrained("org/splitmask-tiny", use_safetensors=True)
        safe = load_pretrained("org/splitmask-tiny")
        reference = load_file("{tmp_path / 'remote.safetensors'}")
        same = all(torch.equal(model.state_dict()[k], reference[k]) and torch.equal(safe.state_dict()[k], reference[k])
                   for k in reference)
        print(json.dumps({{"class": type(model).__module__ + "." + type(model).__name__, "same": same}}))
    """), _subprocess_env(HF_HUB_OFFLINE="1", HF_HOME=str(cache)))
    assert offline == {"class": "hf_ssl.modeling.splitmask.modeling_splitmask.ViTForSplitMask", "same": True}


def test_only_regular_files_of_a_model_repos_kinds_are_pushed(tmp_path):
    """`hf-ssl push` uploaded the targets of symbolic links (a link to /etc/passwd, to the user's own
    Hub token) and pickle files other than *.bin / *.pt / *.pth / *.ckpt."""
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "passwd").write_text("root:x:0:0")
    (outside / "token").write_text(SECRET)
    (outside / "folder" / "notes.md").write_text("outside the run")
    run_dir = tiny_splitmask_run(tmp_path / "run")
    (run_dir / "passwd.txt").symlink_to(outside / "passwd")
    (run_dir / "token.json").symlink_to(outside / "token")
    (run_dir / "linked").symlink_to(outside / "folder", target_is_directory=True)
    for name in ("features.pkl", "state.pickle", "pytorch_model.bin", "weights.pt", "model.ckpt"):
        (run_dir / name).write_bytes(b"pickle")
    os.mkfifo(run_dir / "pipe.json")
    (run_dir / ".hidden.json").write_text("{}")
    (run_dir / "eval_cache").mkdir()
    (run_dir / "eval_cache" / "features.safetensors").write_bytes(b"cache")
    sent, left_out = files_to_push(run_dir)
    assert set(sent) == {"config.json", "model.safetensors", "preprocessor_config.json",
                         "training_args.json", "training_log.jsonl"}
    assert left_out == sorted([
        "features.pkl (not a kind of file a model repo holds: .safetensors, .json, .jsonl, .md, .png, .py, .txt, .model, .jinja)",
        *[f"{name} (not a kind of file a model repo holds: .safetensors, .json, .jsonl, .md, .png, .py, .txt, .model, .jinja)"
          for name in ("model.ckpt", "pytorch_model.bin", "state.pickle", "weights.pt")],
        "linked/ (a symbolic link)", "passwd.txt (a symbolic link)", "pipe.json (not a regular file)",
        "token.json (a symbolic link)",
    ])


@pytest.mark.slow
def test_push_script_takes_the_token_from_the_environment_only(tmp_path):
    run_dir = tiny_splitmask_run(tmp_path / "run")
    script = Path(__file__).resolve().parents[1] / "trainers" / "push.py"
    with HubServer(expected_token=SECRET, lifetime_s=90) as hub:
        env = _subprocess_env(HF_ENDPOINT=hub.url, HF_TOKEN=SECRET, HF_HOME=str(tmp_path / "hf-home"))
        completed = subprocess.run([sys.executable, str(script), str(run_dir), "--repo_id", "org/tiny", "--no_backbone"],
                                   env=env, capture_output=True, text=True, timeout=120)
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert json.loads(completed.stdout)["repo_url"] == f"{hub.url}/org/tiny"
        assert set(hub.files("org/tiny")) == PUSHED_ROOT_FILES - {"eval_results.json"}
        assert "org/tiny-backbone" not in hub.repos
        failed = subprocess.run([sys.executable, str(script), str(run_dir), "--repo_id", "org/tiny"],
                                env={**env, "HF_TOKEN": "hf_other_secret_value"}, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert "hf-ssl push" in failed.stderr and "hf_other_secret_value" not in failed.stderr + failed.stdout
    for output in (completed.stdout, completed.stderr, failed.stdout, failed.stderr):
        assert SECRET not in output
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes()


def test_a_segmentation_model_folder_pushes_with_its_own_card(tmp_path, local_hub):
    """``hf-ssl finetune``'s output: its segmentation card and the Auto class the pipeline loads through."""
    from transformers import ViTConfig, ViTModel

    from hf_ssl.backbones import segmentation_image_processor
    from hf_ssl.eval.segmentation import segmentation_metrics
    from hf_ssl.eval.segmentation_model import save_segmentation_model
    from hf_ssl.modeling.segmentation import BackboneForSemanticSegmentation

    encoder = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64))
    model = BackboneForSemanticSegmentation.from_backbone(encoder, num_labels=2, num_decoder_layers=2).eval()
    pixels, masks = torch.randn(4, 3, 32, 32), torch.randint(0, 2, (4, 32, 32))
    with torch.no_grad():
        metrics = segmentation_metrics(model(pixels).logits.argmax(1), masks, 2, per_class=True)
    result = {**metrics, "class_iou": dict(zip(("class_0", "class_1"), metrics["class_iou"])), "task_type":
              "image-segmentation", "dataset": "random pixels", "split": "test", "num_test_images": 4}
    folder = save_segmentation_model(model, segmentation_image_processor(image_size=32), tmp_path / "seg", result,
                                     {"task": "segmentation", "model": "tiny-vit", "settings": {}})
    push_run_folder(folder, "org/tiny-seg")
    received = local_hub.files("org/tiny-seg", "main")
    card = received["README.md"].decode()
    assert "pipeline_tag: image-segmentation" in card and "| class_1 |" in card and "training_args" not in card
    auto_map = json.loads(received["config.json"])["auto_map"]
    assert auto_map["AutoModelForSemanticSegmentation"] == "modeling_segmentation.BackboneForSemanticSegmentation"
