"""`--method dinov2`: the iBOT masks against facebookresearch/dinov2's collate and generator, one
step's loss against the official composition (ssl_meta_arch.py), the parameter groups, continued
pre-training from a checkpoint, and the refusals. The loss terms themselves are compared with the
official code in test_losses_dinov2.py; the method contract (save / load, exports, card) is in
test_method_contract.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
from run_folders import reported_knn
import torch.nn.functional as F
from transformers import AutoModel, Dinov2WithRegistersModel

import hf_ssl
from hf_ssl.cli import pretrain
from hf_ssl.masking import dinov2_masks
from hf_ssl.masking.blockwise import python_random
from hf_ssl.modeling.dinov2 import BackboneForDINOv2, DINOv2Config
from hf_ssl.recipes import BuildContext, OptimizerDefaults, build_model, get_recipe

IMAGE_SIZE = 32
RECIPE = get_recipe("dinov2")


# ----- transcriptions of facebookresearch/dinov2 -----------------------------------------------------


class OfficialMaskingGenerator:
    """dinov2/data/masking.py ``MaskingGenerator`` drawing from `rng` instead of the random module."""

    def __init__(self, rng, input_size, max_num_patches, min_num_patches=4, min_aspect=0.3):
        self.rng, (self.height, self.width) = rng, input_size
        self.min_num_patches, self.max_num_patches = min_num_patches, max_num_patches
        self.log_aspect_ratio = (math.log(min_aspect), math.log(1 / min_aspect))

    def _mask(self, mask, max_mask_patches):
        delta = 0
        for _ in range(10):
            target_area = self.rng.uniform(self.min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(self.rng.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = self.rng.randint(0, self.height - h)
                left = self.rng.randint(0, self.width - w)
                num_masked = mask[top: top + h, left: left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                if delta > 0:
                    break
        return delta

    def __call__(self, num_masking_patches=0):
        mask = torch.zeros(self.height, self.width, dtype=torch.bool).numpy()
        mask_count = 0
        while mask_count < num_masking_patches:
            max_mask_patches = min(num_masking_patches - mask_count, self.max_num_patches)
            delta = self._mask(mask, max_mask_patches)
            if delta == 0:
                break
            mask_count += delta
        return mask


def official_collated_masks(rng, batch, grid, mask_ratio_tuple=(0.1, 0.5), mask_probability=0.5):
    """dinov2/data/collate.py ``collate_data_and_cast``'s masks, generator built as train.py builds it."""
    generator = OfficialMaskingGenerator(rng, grid, max_num_patches=0.5 * grid[0] * grid[1])
    n_tokens = grid[0] * grid[1]
    n_samples_masked = int(batch * mask_probability)
    probs = torch.linspace(*mask_ratio_tuple, n_samples_masked + 1)
    masks_list = []
    for i in range(n_samples_masked):
        masks_list.append(torch.BoolTensor(generator(int(n_tokens * rng.uniform(float(probs[i]), float(probs[i + 1]))))))
    for _ in range(n_samples_masked, batch):
        masks_list.append(torch.BoolTensor(generator(0)))
    rng.shuffle(masks_list)
    return torch.stack(masks_list).flatten(1)


def official_dino_loss(student_output_list, teacher_out_softmaxed_centered_list, student_temp=0.1):
    """dinov2/loss/dino_clstoken_loss.py ``DINOLoss.forward``."""
    total_loss = 0
    for s in student_output_list:
        lsm = F.log_softmax(s / student_temp, dim=-1)
        for t in teacher_out_softmaxed_centered_list:
            total_loss -= torch.sum(t * lsm, dim=-1).mean()
    return total_loss


def official_koleo(x, eps=1e-8):
    x = F.normalize(x, eps=eps, p=2, dim=-1)
    dots = x @ x.t()
    dots.view(-1)[:: x.shape[0] + 1].fill_(-1)
    nearest = dots.argmax(dim=1)
    return -torch.log(torch.nn.PairwiseDistance(2, eps=1e-8)(x, x[nearest]) + eps).mean()


# ----- helpers -----------------------------------------------------------------------------------------


def tiny_model(**overrides) -> BackboneForDINOv2:
    backbone = hf_ssl.resolve_backbone("dinov2-micro", IMAGE_SIZE)
    fields = dict(backbone_config=backbone.nested(), image_size=IMAGE_SIZE, head_output_dim=64, head_hidden_dim=32,
                  head_bottleneck_dim=16, patch_head_output_dim=48, patch_head_hidden_dim=32, patch_head_bottleneck_dim=16)
    torch.manual_seed(0)
    model = BackboneForDINOv2(DINOv2Config(**{**fields, **overrides}))
    # Move the teacher away from the student, so that a swapped role would show.
    with torch.no_grad():
        for parameter in model.teacher.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def crops(batch=4, local=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
            torch.randn(batch, local, 3, 16, 16, generator=generator))


# ----- masks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("batch", "grid"), [(8, (4, 4)), (16, (14, 14)), (7, (16, 16))])
def test_masks_are_the_official_collate_and_generator(seed, batch, grid):
    ours = dinov2_masks(batch, grid, generator=torch.Generator().manual_seed(seed))
    official = official_collated_masks(python_random(torch.Generator().manual_seed(seed)), batch, grid)
    assert torch.equal(ours, official)


def test_half_the_crops_are_masked_with_10_to_50_percent_of_their_patches():
    masks = dinov2_masks(64, (14, 14), generator=torch.Generator().manual_seed(0))
    counts = masks.sum(dim=1)
    assert (counts > 0).sum() == 32 and (counts == 0).sum() == 32
    assert counts.max() <= 0.5 * 196 and counts[counts > 0].min() >= 1
    assert 0.2 < counts.float().mean() / 196 / 0.5 < 0.35  # mean of the masked ones near 0.3, blocks may fall short


def test_a_batch_always_has_a_masked_patch_and_bad_ranges_are_refused():
    for seed in range(50):
        assert dinov2_masks(2, (2, 2), generator=torch.Generator().manual_seed(seed)).any()
    with pytest.raises(ValueError, match="mask_ratio_range"):
        dinov2_masks(4, (4, 4), mask_ratio_range=(0.6, 0.5))


# ----- one step ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("centering", ["sinkhorn_knopp", "centering"])
@pytest.mark.parametrize("separate_patch_head", [True, False])
def test_loss_is_the_official_composition(centering, separate_patch_head):
    """SSLMetaArch.forward_backward with 2 local crops: the teacher's CLS halves swapped against the
    student's global crops, 2 + 2L pair terms, iBOT at scale 2 * (1 / 2), KoLeo per global crop."""
    model = tiny_model(centering=centering, separate_patch_head=separate_patch_head)
    model.train()
    if centering == "centering":
        model.center.normal_()
        model.patch_center.normal_()
    global_crops, local_crops = crops()
    torch.manual_seed(3)
    output = model(global_crops, local_crops, teacher_temperature=0.05)

    # The official computation from the same networks and masks.
    torch.manual_seed(3)
    batch = global_crops.shape[0]
    global_batch = global_crops.transpose(0, 1).flatten(0, 1)
    local_batch = local_crops.transpose(0, 1).flatten(0, 1)
    masks = dinov2_masks(2 * batch, (4, 4))
    with torch.no_grad():
        teacher_hidden = model.teacher.backbone.model(pixel_values=global_batch).last_hidden_state
        teacher_cls = torch.cat(teacher_hidden[:, 0].chunk(2)[::-1])  # swapped
        teacher_patches = teacher_hidden[:, 5:].flatten(0, 1)[masks.flatten().nonzero().flatten()]
        patch_head = model.teacher.patch_head or model.teacher.dino_head
        teacher_cls_logits, teacher_patch_logits = model.teacher.dino_head(teacher_cls), patch_head(teacher_patches)
        if centering == "sinkhorn_knopp":
            from test_losses_dinov2 import official_sinkhorn_knopp

            cls_targets = official_sinkhorn_knopp(teacher_cls_logits, 0.05)
            patch_targets = official_sinkhorn_knopp(teacher_patch_logits, 0.05)
        else:
            cls_targets = F.softmax((teacher_cls_logits - expected_center_before(model, teacher_cls_logits, "center")) / 0.05, -1)
            patch_targets = F.softmax((teacher_patch_logits - expected_center_before(model, teacher_patch_logits, "patch_center")) / 0.05, -1)
    student_hidden = model.student.backbone.model(pixel_values=global_batch, bool_masked_pos=masks).last_hidden_state
    student_cls = student_hidden[:, 0]
    student_local_cls = model.student.backbone.model(pixel_values=local_batch).last_hidden_state[:, 0]
    student_patches = student_hidden[:, 5:].flatten(0, 1)[masks.flatten().nonzero().flatten()]
    n_local_crops, n_terms = 2, 2 + max(2 * 2, 1)
    local_loss = official_dino_loss(model.student.dino_head(student_local_cls).chunk(n_local_crops),
                                    cls_targets.chunk(2)) / n_terms
    global_loss = official_dino_loss([model.student.dino_head(student_cls)], [cls_targets]) * 2 / n_terms
    koleo = 0.1 * sum(official_koleo(part) for part in student_cls.chunk(2))
    patch_logits = (model.student.patch_head or model.student.dino_head)(student_patches)
    weights = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    ibot = -(torch.sum(patch_targets * F.log_softmax(patch_logits / 0.1, -1), -1) * weights).sum() / masks.shape[0] * 2 * 0.5
    expected = local_loss + global_loss + koleo + ibot
    torch.testing.assert_close(output.loss, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(output.patch_loss, ibot.detach(), rtol=1e-4, atol=1e-4)
    parameters = [parameter for parameter in model.student.parameters() if parameter.requires_grad]
    for ours, official in zip(torch.autograd.grad(output.loss, parameters), torch.autograd.grad(expected, parameters)):
        torch.testing.assert_close(ours, official, rtol=1e-3, atol=1e-5)


def expected_center_before(model, logits, name):
    """The centre forward used: recovered from the updated one, new = 0.9 old + 0.1 mean(logits)."""
    return (getattr(model, name) - 0.1 * logits.mean(dim=0, keepdim=True)) / 0.9


def test_masked_patches_reach_the_student_as_its_mask_token():
    model = tiny_model()
    global_crops, local_crops = crops()
    model.train()
    model(global_crops, local_crops).loss.backward()
    assert model.student.backbone.model.embeddings.mask_token.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in model.teacher.parameters())


# ----- optimisation --------------------------------------------------------------------------------------


def test_parameter_groups_decay_the_rate_per_block_and_exempt_norms_biases_and_layer_scales():
    model = tiny_model(layerwise_decay=0.5, patch_embed_lr_multiplier=0.2)
    groups = RECIPE.parameter_groups(model, weight_decay=0.04)
    by_parameter = {id(parameter): group for group in groups for parameter in group["params"]}
    named = dict(model.named_parameters())
    blocks = 4

    def group(name):
        return by_parameter[id(named[name])]

    prefix = "student.backbone.model."
    assert group(prefix + "embeddings.cls_token")["lr_scale"] == 0.5 ** (blocks + 1)
    assert group(prefix + "embeddings.register_tokens")["apply_weight_decay"]  # tokens are decayed, as official
    assert group(prefix + "embeddings.patch_embeddings.projection.weight")["lr_scale"] == pytest.approx(0.2 * 0.5 ** 5)
    assert group(prefix + "encoder.layer.0.mlp.fc1.weight")["lr_scale"] == 0.5 ** 4
    assert group(prefix + "encoder.layer.3.attention.q_proj.weight")["lr_scale"] == 0.5 ** 1
    assert not group(prefix + "encoder.layer.3.layer_scale1.lambda1")["apply_weight_decay"]
    assert not group(prefix + "encoder.layer.0.norm1.weight")["apply_weight_decay"]
    assert not group(prefix + "encoder.layer.0.mlp.fc1.bias")["apply_weight_decay"]
    assert group(prefix + "layernorm.weight")["lr_scale"] == 1.0
    head_names = [name for name, parameter in named.items() if parameter.requires_grad
                  and name.startswith(("student.dino_head.", "student.patch_head."))]
    assert head_names and all(group(name)["lr_scale"] == 1.0 for name in head_names)
    assert not any(name.startswith("teacher.") and id(parameter) in by_parameter for name, parameter in named.items())


def test_learning_rate_follows_the_square_root_rule_of_1024():
    assert RECIPE.optimizer.scaled_learning_rate(1024) == pytest.approx(4e-3)
    assert RECIPE.optimizer.scaled_learning_rate(256) == pytest.approx(2e-3)
    assert OptimizerDefaults(base_learning_rate=1e-3, reference_batch_size=256).scaled_learning_rate(64) == pytest.approx(2.5e-4)


def test_schedules_warm_the_temperature_raise_the_momentum_and_freeze_the_prototypes_first():
    from hf_ssl.recipes import ScheduleContext

    schedules = RECIPE.schedules(ScheduleContext(max_steps=200, warmup_steps=20, learning_rate=1e-3, weight_decay=0.04,
                                                 method_arguments=RECIPE.method_arguments_defaults()))
    assert schedules["teacher_temperature"][0] == pytest.approx(0.04) and schedules["teacher_temperature"][-1] == pytest.approx(0.07)
    assert schedules["ema_momentum"][0] == pytest.approx(0.992) and schedules["ema_momentum"][-1] > 0.999
    assert schedules["last_layer_frozen"][:2].tolist() == [1.0, 1.0] and schedules["last_layer_frozen"][-1] == 0


# ----- continued pre-training ----------------------------------------------------------------------------------


def test_continued_pretraining_starts_student_and_teacher_from_the_checkpoint(tmp_path):
    """``--model <a DINOv2 folder>`` (as facebook/dinov2-with-registers-small would be): both networks
    hold its weights; DINO's teacher too."""
    source = hf_ssl.resolve_backbone("dinov2-micro", IMAGE_SIZE).transformers_config()
    torch.manual_seed(7)
    Dinov2WithRegistersModel(source).save_pretrained(tmp_path / "dinov2")
    checkpoint = AutoModel.from_pretrained(tmp_path / "dinov2").state_dict()
    for method in ("dinov2", "dino"):
        model = build_model(method, str(tmp_path / "dinov2"), image_size=IMAGE_SIZE)
        for network in (model.student, model.teacher):
            weights = network.backbone.model.state_dict()
            assert all(torch.equal(weights[name], tensor) for name, tensor in checkpoint.items()), (method, network)


def test_a_continued_run_reports_next_to_the_weights_it_started_from(tmp_path, capsys):
    """What the user had is the baseline that matters: the report adds ``pretrained:<starting weights>``."""
    from transformers import ViTImageProcessor

    start = tmp_path / "start"
    torch.manual_seed(0)
    Dinov2WithRegistersModel(hf_ssl.resolve_backbone("dinov2-micro", IMAGE_SIZE).transformers_config()).save_pretrained(start)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(start)
    output_dir = tmp_path / "run"
    code = pretrain.main(["--method", "dinov2", "--dataset_name", "digits", "--model", str(start), "--max_steps", "2",
                          "--report_protocols", "knn", "--report_baselines", "random_init", "--report_to", "none",
                          "--output_dir", str(output_dir)])
    assert code == 0
    out = capsys.readouterr().out
    assert f"report       knn next to random_init, pretrained:{start}" in out
    baselines = json.loads((output_dir / "eval_results.json").read_text())["knn"]["baselines"]
    assert set(baselines) == {"random_init", f"pretrained:{start}"} and 0 < baselines[f"pretrained:{start}"] < 1


# ----- refusals --------------------------------------------------------------------------------------------------


def test_a_backbone_without_a_mask_token_is_refused_in_one_line(capsys):
    code = pretrain.main(["--method", "dinov2", "--model", "vit-micro", "--max_steps", "1"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert "dinov2" in error and "dinov2-small" in error and "Traceback" not in error
    with pytest.raises(ValueError, match="mask token"):
        DINOv2Config(backbone_config=hf_ssl.resolve_backbone("vit-micro", IMAGE_SIZE).nested())


def test_bad_flags_are_refused():
    arguments = RECIPE.method_arguments_defaults()
    arguments.centering = "kmeans"
    with pytest.raises(ValueError, match="--centering"):
        RECIPE.build_model(BuildContext(backbone=hf_ssl.resolve_backbone("dinov2-micro", IMAGE_SIZE),
                                        image_size=IMAGE_SIZE, method_arguments=arguments))


# ----- a real run (slow) ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bundled_run_learns_and_exports_a_dinov2_encoder(tmp_path, capsys):
    """300 steps on the bundled digits (measured: k-NN 0.557 vs 0.488 at random init, raw pixels 0.986;
    2.5 min of training on 2 cores, AMD EPYC). Not evidence that DINOv2 works well here (README): that
    the whole path runs, logs every term, beats an untrained encoder and exports a DINOv2 model."""
    output_dir = tmp_path / "run"
    code = pretrain.main(["--method", "dinov2", "--dataset_name", "digits", "--model", "dinov2-micro",
                          "--report_protocols", "knn", "--report_baselines", "random_init", "raw_pixels",
                          "--max_steps", "300", "--save_steps", "300", "--logging_steps", "20", "--report_to", "none",
                          "--output_dir", str(output_dir)])
    assert code == 0
    pretrained, random_init = reported_knn(capsys.readouterr().out)
    assert pretrained > random_init, (pretrained, random_init)
    records = [json.loads(line) for line in (output_dir / "training_log.jsonl").read_text().splitlines()]
    logged = [record for record in records if "loss" in record]
    assert logged[-1]["loss"] < logged[0]["loss"] and logged[-1]["embedding_std"] > 0.1
    assert {"dino_loss", "patch_loss", "koleo_loss", "masked_fraction"} <= set(logged[-1])
    backbone = AutoModel.from_pretrained(output_dir / "backbone")
    assert type(backbone) is Dinov2WithRegistersModel and backbone.config.num_register_tokens == 4
