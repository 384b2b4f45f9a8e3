"""Make a saved hf-ssl checkpoint loadable with ``trust_remote_code=True``, without hf_ssl installed.

`add_remote_code(folder)` copies the method's ``configuration_*.py`` and ``modeling_*.py`` (from
its ``modeling/<method>/`` package) next to the weights, together with every hf_ssl library module
they import, transitively, and writes ``auto_map`` into config.json for AutoConfig and every Auto
class the model is registered for (AutoModel, AutoModelForPreTraining, and the task classes the
pipelines load through: AutoModelForMaskedImageModeling, AutoModelForSemanticSegmentation, ...).

transformers copies a dynamic module's same-folder relative imports (``from .x import y``) and
nothing else (``transformers/dynamic_module_utils.py``: `get_relative_imports`), and requires every
absolute import to be installed. So the copies are flat, one file per library module, named after
its dotted path (``hf_ssl.losses.contrastive`` -> ``hf_ssl_losses_contrastive.py``), and every
``from hf_ssl... import name`` (also inside functions) is rewritten to a relative import of the
module that *defines* `name`, not of the package that re-exports it, so that only what is used is
copied. A method's modeling package may import hf_ssl library modules, never another method's
modeling package (that would ship, and version, two methods in one folder): `RemoteCodeError`.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LIBRARY_PACKAGE = "hf_ssl"
METHODS_PACKAGE = "hf_ssl.modeling"
# transformers' own patterns for the files a dynamic module needs (dynamic_module_utils.get_relative_imports).
_TRANSFORMERS_RELATIVE_IMPORTS = (re.compile(r"^\s*import\s+\.(\S+)\s*$", re.MULTILINE), re.compile(r"^\s*from\s+\.(\S+)\s+import", re.MULTILINE))


class RemoteCodeError(ValueError):
    """The model's code cannot be made into a self-contained trust_remote_code folder."""


def resolve_model_classes(config_dict: dict) -> tuple[type, type]:
    """The registered hf-ssl ``(config_class, model_class)`` of a saved config.json's contents.

    The config class comes from the AutoConfig registry (`model_type`), the model class is
    ``architectures[0]`` looked up in the method's ``modeling_*`` module.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

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
    return cls.__module__.startswith(METHODS_PACKAGE + ".")


def _supported_auto_classes(config_class: type, model_class: type) -> list[str]:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_MASKED_IMAGE_MODELING_MAPPING,
        MODEL_FOR_PRETRAINING_MAPPING,
        MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING,
        MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING,
        MODEL_MAPPING,
    )

    # the generic classes the config is registered for (every class of a config that has several,
    # SimMIM's Swin and ViT, loads through them) ...
    names = [auto_class for auto_class, mapping in (("AutoModel", MODEL_MAPPING),
                                                    ("AutoModelForPreTraining", MODEL_FOR_PRETRAINING_MAPPING))
             if config_class in mapping]
    # ... and the task classes this very model is registered for (the pipelines load through them)
    for auto_class, mapping in (("AutoModelForMaskedImageModeling", MODEL_FOR_MASKED_IMAGE_MODELING_MAPPING),
                                ("AutoModelForZeroShotImageClassification", MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING),
                                ("AutoModelForSemanticSegmentation", MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING)):
        try:
            if mapping[config_class] is model_class:
                names.append(auto_class)
        except KeyError:
            pass
    return names


# ----------------------------------------------------------------------------- module graph


def _is_library(module: str) -> bool:
    return module == LIBRARY_PACKAGE or module.startswith(LIBRARY_PACKAGE + ".")


def _method_of(module: str) -> str | None:
    """``splitmask`` for ``hf_ssl.modeling.splitmask.modeling_splitmask``; None outside method packages."""
    if module.startswith(METHODS_PACKAGE + "."):
        return module[len(METHODS_PACKAGE) + 1 :].split(".")[0]
    return None


def _module_file(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise RemoteCodeError(f"cannot find the source of {module}")
    return Path(spec.origin)


def _is_package(module: str) -> bool:
    return _module_file(module).name == "__init__.py"


def _parse(module: str) -> tuple[str, ast.Module]:
    source = _module_file(module).read_text(encoding="utf-8")
    return source, ast.parse(source)


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module of ``from <node.module> import ...`` written inside `module`."""
    if node.level == 0:
        return node.module or ""
    package = module if _is_package(module) else module.rsplit(".", 1)[0]
    return importlib.util.resolve_name("." * node.level + (node.module or ""), package)


def _is_submodule(module: str, name: str) -> bool:
    if not _is_package(module):
        return False
    return importlib.util.find_spec(f"{module}.{name}") is not None


def defining_module(module: str, name: str) -> str:
    """The hf_ssl module that defines `name`, following re-exports (``from .x import name``) from `module`."""
    seen = set()
    while (module, name) not in seen:
        seen.add((module, name))
        _, tree = _parse(module)
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        source = _absolute(module, node)
                        if not _is_library(source):
                            return module  # a third-party object re-exported here: this module provides it
                        module, name = source, alias.name
                        break
                else:
                    continue
                break
        else:
            return module
    raise RemoteCodeError(f"import cycle while looking for {name!r} from {module}")


@dataclass
class _Edit:
    start: int  # byte offsets into the file
    end: int
    text: str


def _byte_offset(line_starts: list[int], line: int, column: int) -> int:
    return line_starts[line - 1] + column


class _RemoteCodeCollector:
    """Walks imports from the method's files and produces the rewritten flat files."""

    def __init__(self, method: str):
        self.method = method
        self.flat_names: dict[str, str] = {}  # module -> flat file stem
        self.files: dict[str, str] = {}  # flat file name -> rewritten source

    def flat_name(self, module: str) -> str:
        if _method_of(module) == self.method:
            stem = module.rsplit(".", 1)[1]
        else:
            stem = module.replace(".", "_")
        existing = self.flat_names.setdefault(module, stem)
        clashes = [other for other, other_stem in self.flat_names.items() if other_stem == stem and other != module]
        if clashes:
            raise RemoteCodeError(f"{module} and {clashes[0]} would both be copied as {stem}.py")
        return existing

    def _target(self, importer: str, source: str, name: str) -> str:
        """The module whose flat copy provides `name` for ``from <source> import <name>`` in `importer`."""
        if _is_submodule(source, name):
            raise RemoteCodeError(
                f"{importer} imports the module {source}.{name}; import the names it uses instead "
                f"(`from {source}.{name} import ...`), which remote code can rewrite"
            )
        target = defining_module(source, name)
        method = _method_of(target)
        if target == METHODS_PACKAGE or (method is not None and method != self.method):
            raise RemoteCodeError(
                f"{importer} imports {name!r} from {target}: a method's modeling package may import hf_ssl library "
                f"modules but never another method's modeling package; move the shared code into an hf_ssl library module"
            )
        if target == LIBRARY_PACKAGE:
            raise RemoteCodeError(f"{importer} imports {name!r}, defined in hf_ssl/__init__.py: import it from its own module")
        return target

    def rewrite(self, module: str) -> list[str]:
        """Rewrite `module`'s hf_ssl imports (anywhere in the file); returns the modules it needs."""
        source, tree = _parse(module)
        data = source.encode("utf-8")
        line_starts = [0]
        for line in data.splitlines(keepends=True):
            line_starts.append(line_starts[-1] + len(line))
        edits, needed = [], []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if _is_library(alias.name):
                        raise RemoteCodeError(
                            f"{module} line {node.lineno}: `import {alias.name}`; use `from {alias.name} import name`, "
                            "which remote code can rewrite"
                        )
                continue
            if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
                continue
            absolute = _absolute(module, node)
            if not _is_library(absolute):
                continue
            groups: dict[str, list[str]] = {}
            for alias in node.names:
                if alias.name == "*":
                    raise RemoteCodeError(f"{module} line {node.lineno}: `from {absolute} import *` cannot be resolved")
                target = self._target(module, absolute, alias.name)
                clause = alias.name if alias.asname is None else f"{alias.name} as {alias.asname}"
                groups.setdefault(target, []).append(clause)
            start = _byte_offset(line_starts, node.lineno, node.col_offset)
            end = _byte_offset(line_starts, node.end_lineno, node.end_col_offset)
            indent = data[line_starts[node.lineno - 1] : start].decode("utf-8")
            if indent.strip():
                raise RemoteCodeError(f"{module} line {node.lineno}: put the hf_ssl import on a line of its own")
            statements = [f"from .{self.flat_name(target)} import {', '.join(clauses)}" for target, clauses in groups.items()]
            edits.append(_Edit(start, end, ("\n" + indent).join(statements)))
            needed += list(groups)
        for edit in sorted(edits, key=lambda item: item.start, reverse=True):
            data = data[: edit.start] + edit.text.encode("utf-8") + data[edit.end :]
        self.files[f"{self.flat_name(module)}.py"] = data.decode("utf-8")
        return needed

    def collect(self, roots: Iterable[str]) -> dict[str, str]:
        queue, done = list(roots), set()
        while queue:
            module = queue.pop(0)
            if module in done:
                continue
            done.add(module)
            queue += [needed for needed in self.rewrite(module) if needed not in done]
        return self.files


def remote_code_files(config_class: type, model_class: type) -> dict[str, str]:
    """``{file name: source}`` of a self-contained trust_remote_code copy of a method's code.

    The method's ``configuration_*.py`` and ``modeling_*.py`` and every hf_ssl library module they
    import (transitively), flat, with hf_ssl imports rewritten into same-folder relative imports.

    Raises:
        RemoteCodeError: the code imports another method's modeling package, imports an hf_ssl
            module as a whole (``import hf_ssl.x``), or a copied file would not load.
    """
    method = _method_of(config_class.__module__)
    if method is None or _method_of(model_class.__module__) != method:
        raise RemoteCodeError(f"{config_class.__name__}/{model_class.__name__} do not live in one hf_ssl.modeling package")
    method_folder = Path(inspect.getsourcefile(config_class)).parent
    package = f"{METHODS_PACKAGE}.{method}"
    roots = [config_class.__module__, model_class.__module__]
    roots += [f"{package}.{path.stem}" for pattern in ("configuration_*.py", "modeling_*.py") for path in sorted(method_folder.glob(pattern))]
    files = _RemoteCodeCollector(method).collect(roots)
    for name, source in files.items():
        for pattern in _TRANSFORMERS_RELATIVE_IMPORTS:
            for imported in pattern.findall(source):
                if f"{imported}.py" not in files:
                    raise RemoteCodeError(
                        f"{name} (copied for remote code) has a line transformers reads as an import of .{imported}, "
                        f"which is not part of the copy"
                    )
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and _is_library(node.module or ""):
                raise RemoteCodeError(f"{name} still imports {node.module} after rewriting")
    return files


def add_remote_code(save_directory: str | Path) -> dict[str, str]:
    """Copy the method's code (self-contained) next to a saved hf-ssl checkpoint and set ``auto_map``.

    Args:
        save_directory: a folder written by ``model.save_pretrained`` (config.json + weights).

    Returns:
        The ``auto_map`` written (empty for models that transformers itself provides, e.g.
        ViTMAEForPreTraining: they need no remote code).

    Raises:
        RemoteCodeError: see `remote_code_files`.
    """
    save_directory = Path(save_directory)
    config_path = save_directory / "config.json"
    config_dict = json.loads(config_path.read_text(encoding="utf-8"))
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config_dict.get("model_type")
    if model_type in CONFIG_MAPPING and not is_hf_ssl_class(CONFIG_MAPPING[model_type]):
        return {}
    config_class, model_class = resolve_model_classes(config_dict)
    if not (is_hf_ssl_class(config_class) and is_hf_ssl_class(model_class)):
        raise ValueError(f"{config_class.__name__}/{model_class.__name__} do not live in an hf_ssl.modeling package")
    for name, source in remote_code_files(config_class, model_class).items():
        (save_directory / name).write_text(source, encoding="utf-8")
    config_module = config_class.__module__.rsplit(".", 1)[1]
    model_module = model_class.__module__.rsplit(".", 1)[1]
    auto_map = {"AutoConfig": f"{config_module}.{config_class.__name__}"}
    for auto_class in _supported_auto_classes(config_class, model_class):
        auto_map[auto_class] = f"{model_module}.{model_class.__name__}"
    config_dict["auto_map"] = auto_map
    config_path.write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return auto_map
