"""Self-contained trust_remote_code folders: the import rewriting rules, and every registered model
family loaded by a Python that cannot import hf_ssl (same outputs as the original model)."""

from __future__ import annotations

import sys
import textwrap

import pytest

import hf_ssl.remote_code as remote_code
from hf_ssl.remote_code import RemoteCodeError, defining_module, remote_code_files

# ----- the rules, on a throw-away package laid out like hf_ssl (library + modeling/<method>)

FAKE_PACKAGE = {
    "fakessl/__init__.py": "from fakessl.losses import nce\n",
    "fakessl/losses/__init__.py": "from .contrastive import nce\nfrom .pixels import l1\n",
    "fakessl/losses/contrastive.py": "import torch\n\nfrom fakessl.helpers import gather\n\n\ndef nce(x):\n    return gather(x)\n",
    "fakessl/losses/pixels.py": "def l1(x):\n    return x.abs()\n",
    "fakessl/helpers.py": "SCALE = 2\n\n\ndef gather(x):\n    return x * SCALE\n",
    "fakessl/unused.py": "raise RuntimeError('never copied')\n",
    "fakessl/modeling/__init__.py": "",
    "fakessl/modeling/alpha/__init__.py": "from .configuration_alpha import AlphaConfig\n",
    "fakessl/modeling/alpha/configuration_alpha.py": "class AlphaConfig:\n    pass\n",
    "fakessl/modeling/alpha/modeling_alpha.py": textwrap.dedent("""\
        from fakessl.losses import nce as contrastive_loss
        from .configuration_alpha import AlphaConfig


        def loss(x):
            if x is None:
                from fakessl.losses import l1
                return l1
            return contrastive_loss(x)
        """),
    "fakessl/modeling/beta/__init__.py": "",
    "fakessl/modeling/beta/configuration_beta.py": "class BetaConfig:\n    pass\n",
    "fakessl/modeling/beta/modeling_beta.py": "from ..alpha.modeling_alpha import loss\n\n\nclass BetaModel:\n    pass\n",
}


@pytest.fixture
def fake_library(tmp_path, monkeypatch):
    for relative, source in FAKE_PACKAGE.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(remote_code, "LIBRARY_PACKAGE", "fakessl")
    monkeypatch.setattr(remote_code, "METHODS_PACKAGE", "fakessl.modeling")
    yield tmp_path
    for name in [name for name in sys.modules if name == "fakessl" or name.startswith("fakessl.")]:
        del sys.modules[name]


def test_symbols_resolve_to_their_defining_module(fake_library):
    assert defining_module("fakessl.losses", "nce") == "fakessl.losses.contrastive"
    assert defining_module("fakessl", "nce") == "fakessl.losses.contrastive"  # two re-exports deep
    assert defining_module("fakessl.helpers", "SCALE") == "fakessl.helpers"  # a constant, defined there


def test_imports_are_rewritten_flat_and_transitively(fake_library):
    import fakessl.modeling.alpha.configuration_alpha as configuration
    import fakessl.modeling.alpha.modeling_alpha as modeling

    model_class = type("AlphaModel", (), {"__module__": modeling.__name__})
    files = remote_code_files(configuration.AlphaConfig, model_class)
    assert sorted(files) == [
        "configuration_alpha.py", "fakessl_helpers.py", "fakessl_losses_contrastive.py", "fakessl_losses_pixels.py",
        "modeling_alpha.py",
    ]  # not the package __init__ files, not fakessl/unused.py
    assert "from .fakessl_losses_contrastive import nce as contrastive_loss\n" in files["modeling_alpha.py"]
    # the import inside the function keeps its indentation
    assert "        from .fakessl_losses_pixels import l1\n" in files["modeling_alpha.py"]
    assert "from .fakessl_helpers import gather\n" in files["fakessl_losses_contrastive.py"]
    assert "fakessl." not in "".join(files.values()).replace("fakessl_", "")


def test_importing_another_methods_modeling_package_is_refused(fake_library):
    import fakessl.modeling.beta.configuration_beta as configuration

    model_class = type("BetaModel", (), {"__module__": "fakessl.modeling.beta.modeling_beta"})
    with pytest.raises(RemoteCodeError, match=r"modeling_beta imports 'loss' from fakessl\.modeling\.alpha\.modeling_alpha.*"
                                              r"never another method's modeling package"):
        remote_code_files(configuration.BetaConfig, model_class)
