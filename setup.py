"""hf-ssl: self-supervised pre-training for vision, native to the Hugging Face ecosystem.

The method folders live in the top-level ``modeling/`` directory (HF naming: one folder per
method with ``configuration_*.py`` and ``modeling_*.py``) but are only importable as
``hf_ssl.modeling``: ``package_dir`` maps them under the single ``hf_ssl`` namespace.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

library_packages = find_packages(include=["hf_ssl", "hf_ssl.*"])
method_packages = ["modeling." + p for p in find_packages(where="modeling")]
package_dir = {"hf_ssl": "hf_ssl", "hf_ssl.modeling": "modeling", "hf_ssl.model_cards": "model_cards"}
for name in method_packages:
    package_dir["hf_ssl." + name] = name.replace(".", "/")

# Open ranges for users (their CUDA, their torch); constraints.txt pins what CI runs.
install_requires = [
    "torch>=2.2",
    "torchvision>=0.17",
    "transformers>=5.0,<6",
    "huggingface_hub>=1.0",
    "datasets>=3.0",
    "accelerate>=1.0",
    "safetensors>=0.4",
    "evaluate>=0.4",
    "timm>=1.0",
    "scikit-learn>=1.3",
    "scipy>=1.10",
    "pillow>=10",
    "numpy>=1.24",
    "pyyaml>=6",
    "jinja2>=3",
    "matplotlib>=3.7",
    "tqdm>=4.60",
    "torchdata>=0.8",
    "tensorboard>=2.14",
]

extras_require = {
    "test": ["pytest>=8", "olah>=0.5", "uvicorn>=0.30"],
}
extras_require["dev"] = sorted(set(sum(extras_require.values(), [])))

setup(
    name="hf-ssl",
    version="0.2.0",
    description="Self-supervised pre-training for vision on your own data, native to the Hugging Face ecosystem",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=library_packages + ["hf_ssl.modeling", "hf_ssl.model_cards"] + ["hf_ssl." + p for p in method_packages],
    # The console script's module sits beside the package, so that `hf-ssl --help` does not import it.
    py_modules=["hf_ssl_console"],
    package_dir=package_dir,
    package_data={"hf_ssl.model_cards": ["*.md"]},
    include_package_data=True,
    install_requires=install_requires,
    extras_require=extras_require,
    entry_points={"console_scripts": ["hf-ssl=hf_ssl_console:main"]},
)
