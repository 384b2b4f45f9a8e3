"""Check that a model's trust_remote_code folder works where hf_ssl cannot be imported.

`assert_remote_code_matches(model, inputs, folder)` saves `model`, runs `add_remote_code`, loads
the folder with ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` in a fresh Python
whose ``import hf_ssl`` fails, runs it on the same `inputs` (same seed for any mask it draws) and
compares every tensor output with the original model's. Reuse it for every new method.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hf_ssl.hub import add_remote_code

CHILD = textwrap.dedent('''
    import json, sys
    sys.modules["hf_ssl"] = None  # `import hf_ssl` raises ImportError from here on
    try:
        import hf_ssl  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("hf_ssl is importable in the child process")
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel
    folder, seed = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    inputs = load_file(f"{folder}/inputs.safetensors")
    torch.manual_seed(seed)
    with torch.no_grad():
        outputs = model(**inputs)
    tensors = {key: value.contiguous().clone() for key, value in outputs.items() if isinstance(value, torch.Tensor)}  # may alias
    save_file(tensors, f"{folder}/remote_outputs.safetensors")
    loaded = sorted(name for name in sys.modules if name.startswith("transformers_modules"))
    print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__, "modules": loaded}))
''')


def _child_environment(hf_home: Path) -> dict:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    environment.pop("PYTHONPATH", None)
    # HF_HOME: transformers copies the dynamic modules under it; keep them out of the user's cache.
    environment.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1", HF_HOME=str(hf_home))
    return environment


def assert_remote_code_matches(model: torch.nn.Module, inputs: dict[str, torch.Tensor], folder: Path, seed: int = 0) -> dict:
    """Save + `add_remote_code` + load without hf_ssl in a subprocess; outputs must equal `model`'s.

    Args:
        model: an hf-ssl model (eval mode is set here).
        inputs: keyword tensors of ``model.forward`` (pixel values, masks, noise).
        folder: an empty folder to save into.
        seed: torch seed set right before both forwards (for masks drawn inside the model).

    Returns:
        What the child reported: the loaded class and the dynamic modules it imported.
    """
    folder = Path(folder)
    model.eval()
    model.save_pretrained(folder)
    add_remote_code(folder)
    save_file({key: value.contiguous() for key, value in inputs.items()}, str(folder / "inputs.safetensors"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        with torch.no_grad():
            expected = {key: value for key, value in model(**inputs).items() if isinstance(value, torch.Tensor)}
    finally:
        torch.set_num_threads(threads)
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), str(seed)],
        # cwd: a folder other than the model's, so its flat files are only reachable as transformers loads them.
        cwd=folder.parent, env=_child_environment(folder.parent / "hf-home"), capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["class"].startswith("transformers_modules."), report
    actual = load_file(str(folder / "remote_outputs.safetensors"))
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, msg=lambda message, key=key: f"output {key!r}: {message}")
    return report
