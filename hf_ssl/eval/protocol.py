"""Evaluation protocols as plug-ins.

A protocol is one module (``knn.py``, ``linear_probe.py``, ``finetune.py``, ``zero_shot.py``,
``retrieval.py``) that subclasses `EvaluationProtocol` and registers an instance; ``hf-ssl
evaluate --protocol NAME``, the end-of-training report and the model card find it here. Its
settings are a frozen dataclass whose fields become ``--<name>_<field>`` flags of ``hf-ssl
evaluate`` (`add_settings_arguments`), so adding a protocol edits nothing else.

A protocol measures a `hf_ssl.eval.candidates.Candidate`: the encoder under evaluation or one of
its baselines.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from abc import ABC, abstractmethod

from typing import TYPE_CHECKING

import torch

from .data import DataSelection, LabelledData

if TYPE_CHECKING:
    from .candidates import Candidate


class EvaluationProtocol(ABC):
    """A way to measure an encoder with labelled images.

    Class attributes a subclass sets:
        name: the ``--protocol`` value.
        title: how reports and cards name it ("Linear probe").
        description: one line for ``--help``.
        settings_class: a frozen dataclass of its settings (fields -> ``--<name>_<field>`` flags; a
            field's ``metadata={"aliases": ("--flag",)}`` adds other spellings, ``"help"`` its help).
        image_text: the protocol reads an image-text model folder (zero-shot, retrieval) instead
            of measuring candidates on labelled subsets.
        trains_encoder: the protocol updates the encoder (fine-tuning); its random-init result is
            the supervised baseline.
        metric: the headline metric of its results (what baselines are compared by).
        task_type: the model-index task its results are filed under.
    """

    name: str = ""
    title: str = ""
    description: str = ""
    settings_class: type = type(None)
    image_text: bool = False
    trains_encoder: bool = False
    metric: str = "accuracy"
    task_type: str = "image-classification"

    def settings(self, **values) -> object:
        """The settings from flag values (None = not given)."""
        return self.settings_class(**{name: value for name, value in values.items() if value is not None})

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this protocol's flags to ``hf-ssl evaluate``."""
        add_settings_arguments(parser, self.name, self.settings_class)

    def evaluate(self, candidate: Candidate, data: LabelledData, subset: torch.Tensor, settings, seed: int) -> dict:
        """Metrics (`metric` first) of `candidate`, learning from the training images `subset`
        (indices into ``data.train_labels``) and reporting on the test split."""
        raise TypeError(f"{self.name} is an image-text protocol: use evaluate_folder")

    def evaluate_folder(self, model_path: str, selection: DataSelection, settings, random_init: bool, seed: int) -> dict:
        """Metrics of an image-text model folder (`image_text` protocols)."""
        raise TypeError(f"{self.name} measures candidates: use evaluate")

    def details(self, settings) -> dict:
        """The settings a result records next to its metrics."""
        return dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else {}


_PROTOCOLS: dict[str, EvaluationProtocol] = {}


def register_protocol(protocol: EvaluationProtocol) -> EvaluationProtocol:
    if not protocol.name or protocol.name in _PROTOCOLS:
        raise ValueError(f"protocol name {protocol.name!r} is empty or already registered")
    _PROTOCOLS[protocol.name] = protocol
    return protocol


def get_protocol(name: str) -> EvaluationProtocol:
    if name not in _PROTOCOLS:
        raise ValueError(f"protocol must be one of {available_protocols()}, got {name!r}")
    return _PROTOCOLS[name]


def available_protocols() -> list[str]:
    return list(_PROTOCOLS)


# ----------------------------------------------------------------------------- settings as flags


def _flag_type(annotation) -> tuple[type, bool, tuple | None]:
    """``(element type, is a list, choices)`` of a settings field annotation."""
    annotation = typing.get_type_hints(type("_", (), {"__annotations__": {"a": annotation}}))["a"] \
        if isinstance(annotation, str) else annotation
    arguments = [item for item in typing.get_args(annotation) if item is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(arguments) == 1:
        return _flag_type(arguments[0])
    if typing.get_origin(annotation) is typing.Literal:
        return type(arguments[0]), False, tuple(arguments)
    if typing.get_origin(annotation) in (tuple, list):
        return arguments[0], True, None
    return annotation, False, None


def add_settings_arguments(parser: argparse.ArgumentParser, prefix: str, settings_class: type,
                           aliases: bool = True) -> None:
    """One ``--<prefix>_<field>`` flag per field of `settings_class` (default None = the dataclass's),
    plus the fields' ``metadata["aliases"]`` spellings when `aliases` (one protocol may own them)."""
    hints = typing.get_type_hints(settings_class)
    defaults = settings_class()
    group = parser.add_argument_group(f"--protocol {prefix}")
    for item in dataclasses.fields(settings_class):
        element, is_list, choices = _flag_type(hints[item.name])
        default = getattr(defaults, item.name)
        help_text = item.metadata.get("help", item.name.replace("_", " "))
        flags = [f"--{prefix}_{item.name}", *(item.metadata.get("aliases", ()) if aliases else ())]
        kwargs: dict = {"dest": f"{prefix}_{item.name}", "default": None, "help": f"{help_text} (default: {default})"}
        if element is bool:
            kwargs["type"] = lambda text: text.lower() in ("1", "true", "yes")
        else:
            kwargs["type"] = element
        if choices:
            kwargs["choices"] = choices
        if is_list:
            kwargs["nargs"] = "+"
        group.add_argument(*flags, **kwargs)


def settings_values(arguments: argparse.Namespace, prefix: str, settings_class: type) -> dict:
    """The flag values of `add_settings_arguments` as ``{field: value}`` (None when not given)."""
    values = {}
    for item in dataclasses.fields(settings_class):
        value = getattr(arguments, f"{prefix}_{item.name}", None)
        values[item.name] = tuple(value) if isinstance(value, list) else value
    return values


__all__ = [
    "EvaluationProtocol",
    "add_settings_arguments",
    "available_protocols",
    "get_protocol",
    "register_protocol",
    "settings_values",
]
