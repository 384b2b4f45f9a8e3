"""Make a saved hf-ssl checkpoint loadable with ``trust_remote_code=True``.

`add_remote_code(folder)` copies the method's ``configuration_*.py`` and ``modeling_*.py`` (from
its ``modeling/<method>/`` package) next to the weights and writes ``auto_map`` into config.json
for AutoConfig, AutoModel, AutoModelForPreTraining (and AutoModelForMaskedImageModeling when the
model is registered for it). A process that never imported hf_ssl then loads the folder with
``AutoModel.from_pretrained(folder, trust_remote_code=True)``. Relative imports between the
copied files (``from .configuration_x import ...``) resolve in the folder; absolute ``hf_ssl``
imports need hf_ssl installed where the model is loaded.
"""

from __future__ import annotations

import importlib
import inspect
import json
import shutil
from pathlib import Path

REMOTE_AUTO_CLASSES = ("AutoModel", "AutoModelForPreTraining")


def resolve_model_classes(config_dict: dict) -> tuple[type, type]:
    """The registered hf-ssl ``(config_class, model_class)`` of a saved config.json's contents.

    The config class comes from the AutoConfig registry (`model_type`), the model class is
    ``architectures[0]`` looked up in the method's ``modeling_*`` module.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from hf_ssl.registry import register_auto_classes

    register_auto_classes()
    model_type = config_dict.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"config.json has model_type {model_type!r}, which is not registered with AutoConfig")
    config_class = CONFIG_MAPPING[model_type]
    architectures = config_dict.get("architectures") or []
    if not architectures:
        raise ValueError("config.json has no 'architectures' entry: save the model with save_pretrained")
    package = config_class.__module__.rsplit(".", 1)[0]
    module_name = config_class.__module__.rsplit(".", 1)[1].replace("configuration_", "modeling_", 1)
    modeling_module = importlib.import_module(f"{package}.{module_name}")
    if not hasattr(modeling_module, architectures[0]):
        raise ValueError(f"{modeling_module.__name__} defines no class {architectures[0]!r} (config.json architectures)")
    return config_class, getattr(modeling_module, architectures[0])


def is_hf_ssl_class(cls: type) -> bool:
    """True for classes defined in hf-ssl's method packages (``hf_ssl.modeling.<method>``)."""
    return cls.__module__.startswith("hf_ssl.modeling.")


def _supported_auto_classes(config_class: type, model_class: type) -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_IMAGE_MODELING_MAPPING

    names = list(REMOTE_AUTO_CLASSES)
    try:
        if MODEL_FOR_MASKED_IMAGE_MODELING_MAPPING[config_class] is model_class:
            names.append("AutoModelForMaskedImageModeling")
    except KeyError:
        pass
    return names


def add_remote_code(save_directory: str | Path) -> dict[str, str]:
    """Copy the method's code next to a saved hf-ssl checkpoint and set config.json's ``auto_map``.

    Args:
        save_directory: a folder written by ``model.save_pretrained`` (config.json + weights).

    Returns:
        The ``auto_map`` written (empty for models that transformers itself provides, e.g.
        ViTMAEForPreTraining: they need no remote code).
    """
    save_directory = Path(save_directory)
    config_path = save_directory / "config.json"
    config_dict = json.loads(config_path.read_text(encoding="utf-8"))
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from hf_ssl.registry import register_auto_classes

    register_auto_classes()
    model_type = config_dict.get("model_type")
    if model_type in CONFIG_MAPPING and not is_hf_ssl_class(CONFIG_MAPPING[model_type]):
        return {}
    config_class, model_class = resolve_model_classes(config_dict)
    if not (is_hf_ssl_class(config_class) and is_hf_ssl_class(model_class)):
        raise ValueError(f"{config_class.__name__}/{model_class.__name__} do not live in an hf_ssl.modeling package")
    method_folder = Path(inspect.getsourcefile(config_class)).parent
    copied = []
    for source in sorted(method_folder.glob("configuration_*.py")) + sorted(method_folder.glob("modeling_*.py")):
        shutil.copyfile(source, save_directory / source.name)
        copied.append(source.name)
    config_module = Path(inspect.getsourcefile(config_class)).stem
    model_module = Path(inspect.getsourcefile(model_class)).stem
    auto_map = {"AutoConfig": f"{config_module}.{config_class.__name__}"}
    for auto_class in _supported_auto_classes(config_class, model_class):
        auto_map[auto_class] = f"{model_module}.{model_class.__name__}"
    config_dict["auto_map"] = auto_map
    config_path.write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return auto_map
