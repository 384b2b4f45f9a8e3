"""Model cards, safe loading, trust_remote_code export and Hub upload for hf-ssl run folders."""

from .cards import build_backbone_card, build_model_card, build_segmentation_card, write_model_card
from hf_ssl.backbones.loading import load_backbone
from hf_ssl.safe_loading import UnsafeCheckpointError, check_safetensors_only, list_checkpoint_files, load_pretrained
from .push import PushError, prepare_run_folder, push_run_folder
from hf_ssl.remote_code import add_remote_code

__all__ = [
    "PushError",
    "UnsafeCheckpointError",
    "add_remote_code",
    "build_backbone_card",
    "build_model_card",
    "build_segmentation_card",
    "check_safetensors_only",
    "list_checkpoint_files",
    "load_backbone",
    "load_pretrained",
    "prepare_run_folder",
    "push_run_folder",
    "write_model_card",
]
