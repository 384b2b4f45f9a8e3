"""`--method distillation`: the queue, the detached teacher, the recipe's choices and a real run."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import ViTConfig, ViTModel

import hf_ssl
from hf_ssl.backbones.modules import backbone_features
from hf_ssl.cli import pretrain
from hf_ssl.modeling.distillation.recipe import queue_size_for, resolve_teacher
from process_groups import run_forked_workers

IMAGE_SIZE = 32


def _teacher(width: int = 24) -> ViTModel:
    torch.manual_seed(1)
    return ViTModel(ViTConfig(image_size=IMAGE_SIZE, patch_size=8, hidden_size=width, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=2 * width), add_pooling_layer=False)


def _student(queue_size: int = 6, teacher_width: int = 24) -> hf_ssl.BackboneForDistillation:
    torch.manual_seed(0)
    config = hf_ssl.DistillationConfig(backbone_config=hf_ssl.resolve_backbone("vit-micro", IMAGE_SIZE).nested(),
                                       image_size=IMAGE_SIZE, teacher_hidden_size=teacher_width, queue_size=queue_size)
    return hf_ssl.BackboneForDistillation(config)


def _images(count: int = 4) -> torch.Tensor:
    return torch.randn(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(2))


def test_the_queue_is_a_ring_of_normalised_teacher_embeddings_filled_in_training_only():
    model = _student(queue_size=6)
    model.attach_teacher(_teacher())
    model.eval()
    model(_images())
    assert int(model.queue_length) == 0  # evaluation leaves it alone
    model.train()
    model(_images(4))
    assert int(model.queue_length) == 4 and int(model.queue_position) == 4
    model(_images(4))  # wraps: rows 4, 5 then 0, 1
    assert int(model.queue_length) == 6 and int(model.queue_position) == 2
    torch.testing.assert_close(model.queue.norm(dim=-1), torch.ones(6))
    teacher_embeddings, _ = model.teacher_targets(_images(4))
    torch.testing.assert_close(model.queue[[4, 5, 0, 1]], torch.nn.functional.normalize(teacher_embeddings, dim=-1))


def test_the_teacher_is_attached_not_owned():
    model, teacher = _student(), _teacher()
    model.attach_teacher(teacher)
    model.train()
    assert not teacher.training and not any(parameter.requires_grad for parameter in teacher.parameters())
    assert not any(name.startswith("teacher") for name in model.state_dict())
    model(_images()).loss.backward()
    assert all(parameter.grad is None for parameter in teacher.parameters())
    assert model.projection.weight.grad is not None


def test_explicit_teacher_outputs_give_the_attached_teachers_loss(tmp_path):
    model = _student()
    model.attach_teacher(_teacher())
    model.eval()
    images = _images()
    embeddings, features = model.teacher_targets(images)
    with torch.no_grad():
        expected = model(images)
        model.save_pretrained(tmp_path)
        loaded = hf_ssl.BackboneForDistillation.from_pretrained(tmp_path).eval()
        got = loaded(images, teacher_embeddings=embeddings, teacher_features=features)
    torch.testing.assert_close(got.loss, expected.loss)
    assert expected.dense_loss is not None and expected.global_loss is not None
    with pytest.raises(RuntimeError, match="attach_teacher"):
        loaded(images)
    with pytest.raises(ValueError, match="teacher_hidden_size=24"):
        loaded.attach_teacher(_teacher(width=16))


def test_the_recipe_sizes_the_queue_and_refuses_a_teacher_without_weights(tmp_path):
    assert queue_size_for(None, None) == 4096 and queue_size_for(1438, None) == 719 and queue_size_for(1438, 100) == 100
    with pytest.raises(ValueError, match="trained weights"):
        resolve_teacher("vit-micro", IMAGE_SIZE)
    _teacher().save_pretrained(tmp_path / "teacher")
    assert resolve_teacher(str(tmp_path / "teacher"), IMAGE_SIZE).weights is not None


def test_a_run_without_a_teacher_fails_with_one_line(capsys):
    assert pretrain.main(["--method", "distillation", "--max_steps", "1"]) == 2
    assert "--teacher" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_distils_learns_resumes_and_saves_no_teacher(tmp_path):
    """The teacher is another run's folder; the student's loss falls; a resumed run re-attaches the
    teacher from --teacher; neither the checkpoint nor the Hub folder holds it."""
    teacher_folder = tmp_path / "teacher"
    _teacher().save_pretrained(teacher_folder)
    output_dir = tmp_path / "run"
    common = ["--method", "distillation", "--teacher", str(teacher_folder), "--dataset_name", "digits", "--model",
              "vit-micro", "--logging_steps", "10", "--report_to", "none", "--report_protocols", "knn",
              "--report_baselines", "random_init", "--output_dir", str(output_dir)]
    assert pretrain.main([*common, "--max_steps", "60", "--save_steps", "30"]) == 0
    losses = [json.loads(line)["loss"] for line in (output_dir / "training_log.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert losses[-1] < 0.5 * losses[0], losses
    config = json.loads((output_dir / "config.json").read_text())
    assert config["teacher"] == str(teacher_folder) and config["model_type"] == "hf-ssl-distillation"
    with safe_open(str(output_dir / "model.safetensors"), "pt") as weights:
        assert not any(name.startswith("teacher") for name in weights.keys())
    first_checkpoint = sorted((output_dir / "checkpoints").iterdir())[0]
    assert pretrain.main([*common, "--max_steps", "60", "--save_steps", "30", "--resume_from_checkpoint",
                          str(first_checkpoint)]) == 0
    with safe_open(str(output_dir / "model.safetensors"), "pt") as weights:
        assert int(weights.get_tensor("queue_length")) > 0


def test_a_dinov2_with_registers_teacher_distils_into_a_conv_student(tmp_path):
    """The recipe as the CLI runs it, with the kind of teacher users ask for (tiny config: offline)."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from hf_ssl.recipes import BuildContext, get_recipe

    torch.manual_seed(0)
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48, image_size=IMAGE_SIZE,
        patch_size=8, num_register_tokens=4)).save_pretrained(tmp_path / "dinov2")
    recipe = get_recipe("distillation")
    arguments = recipe.method_arguments_defaults()
    arguments.teacher = str(tmp_path / "dinov2")
    model = recipe.build_model(BuildContext(backbone=hf_ssl.resolve_backbone("resnet-nano", IMAGE_SIZE),
                                            image_size=IMAGE_SIZE, method_arguments=arguments))
    output = model(_images())
    assert model.config.teacher_hidden_size == 24 and torch.isfinite(output.loss) and output.dense_loss is not None


def _two_step_run(rows: slice, world_size: int, all_reduce=None) -> dict:
    """Two training steps of a student (queue of 6) on `rows` of two global batches of 4 images, with
    the teacher's outputs given; DDP's gradient average of the second step and the final queue."""
    model = _student(queue_size=6)
    model.train()
    teacher = _teacher()
    results = {}
    for step in range(2):
        images = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(10 + step))
        embeddings, features = backbone_features(teacher, images)
        output = model(images[rows], teacher_embeddings=embeddings[rows], teacher_features=features[rows])
        model.zero_grad()
        (output.loss / world_size).backward()
        results[f"loss{step}"] = output.loss.detach()
    gradients = {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None}
    if all_reduce is not None:
        for gradient in gradients.values():
            all_reduce(gradient)
    return {**results, "gradients": gradients, "queue": model.queue.clone(), "queue_length": int(model.queue_length)}


def _distributed_worker(rank: int, world_size: int, store: str, out: str) -> None:
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    try:
        torch.save(_two_step_run(slice(2 * rank, 2 * rank + 2), world_size, dist.all_reduce), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_fill_the_queue_and_learn_as_one_process_on_the_global_batch(tmp_path):
    """Each process's step sees every process's teacher embeddings of this step (gathered) and
    enqueues all of them: the queues stay identical across processes and equal one process's on the
    whole batch, and so do the mean loss and the averaged gradients (the dense term is per image)."""
    run_forked_workers(_distributed_worker, 2, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    single = _two_step_run(slice(None), world_size=1)
    assert single["queue_length"] == ranks[0]["queue_length"] == ranks[1]["queue_length"] == 6
    for result in ranks:
        torch.testing.assert_close(result["queue"], single["queue"])
    for step in ("loss0", "loss1"):  # the second step's loss reads the queue filled by the first
        torch.testing.assert_close((ranks[0][step] + ranks[1][step]) / 2, single[step])
    for name, gradient in single["gradients"].items():
        for result in ranks:
            torch.testing.assert_close(result["gradients"][name], gradient, rtol=1e-4, atol=1e-6)
