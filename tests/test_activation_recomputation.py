"""`--gradient_checkpointing`: every block recomputed in the backward pass, the same gradients, less kept."""

from __future__ import annotations

import pytest
import torch

from hf_ssl.masking import random_split_mask
from hf_ssl.training.activation_recomputation import use_activation_checkpointing
from tiny_models import tiny_splitmask


def _kept_bytes_and_gradients(model, loss_of):
    model.zero_grad()
    storages = {}

    def keep(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    torch.manual_seed(5)  # drop path draws from the global generator
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        loss = loss_of(model)
    loss.backward()
    gradients = torch.cat([parameter.grad.flatten() for parameter in model.parameters() if parameter.grad is not None])
    return sum(storages.values()), loss.detach(), gradients


def test_recomputed_blocks_give_the_same_loss_and_gradients_with_drop_path_and_keep_less():
    """SplitMask: its encoder's and decoder's blocks (BEiT layers with drop path 0.1, as in training)."""
    model = tiny_splitmask(encoder_type="beit", drop_path_rate=0.3).train()
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    split = random_split_mask(4, model.config.num_patches, generator=torch.Generator().manual_seed(3))

    def loss_of(model):
        return model(pixel_values=pixels, bool_masked_pos=split).loss

    kept, loss, gradients = _kept_bytes_and_gradients(model, loss_of)
    switched = use_activation_checkpointing(model)
    assert switched == model.config.num_hidden_layers + model.config.decoder_num_hidden_layers
    recomputed_kept, recomputed_loss, recomputed_gradients = _kept_bytes_and_gradients(model, loss_of)
    torch.testing.assert_close(recomputed_loss, loss, rtol=0, atol=0)
    torch.testing.assert_close(recomputed_gradients, gradients, rtol=1e-5, atol=1e-7)
    assert recomputed_kept < 0.6 * kept, (recomputed_kept, kept)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "resnet18"])
def test_timm_models_checkpoint_their_own_blocks(name):
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=0, **({"img_size": 32} if "vit" in name else {})).train()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def loss_of(model):
        return model(images).pow(2).mean()

    kept, loss, gradients = _kept_bytes_and_gradients(model, loss_of)
    assert use_activation_checkpointing(model) == 1 and model.grad_checkpointing
    recomputed_kept, recomputed_loss, recomputed_gradients = _kept_bytes_and_gradients(model, loss_of)
    torch.testing.assert_close(recomputed_loss, loss)
    torch.testing.assert_close(recomputed_gradients, gradients, rtol=1e-4, atol=1e-6)
    assert recomputed_kept < kept


def test_a_model_without_blocks_is_not_switched():
    assert use_activation_checkpointing(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())) == 0


def test_the_trainer_flag_switches_the_model_and_records_it(tmp_path, caplog):
    import json
    import logging

    from hf_ssl.cli import pretrain

    output_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="hf_ssl.pretrain"):
        code = pretrain.main(["--method", "mae", "--model", "vit-micro", "--dataset_name", "digits", "--max_steps", "2",
                              "--total_batch_size", "8", "--gradient_checkpointing", "--report_to", "none",
                              "--report_protocols", "none", "--dataloader_num_workers", "0", "--output_dir", str(output_dir)])
    assert code == 0
    assert json.loads((output_dir / "training_args.json").read_text())["gradient_checkpointing"] is True
    assert any("Activation checkpointing: " in record.getMessage() for record in caplog.records)
    config = json.loads((output_dir / "config.json").read_text())
    assert not [key for key in config if "checkpointing" in key], config  # the saved model trains as the user chooses
