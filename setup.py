"""Install segtron: ``pip install .`` (or ``pip install -e .[dev]`` for development).

Dependency ranges here say what segtron works with; ``requirements/`` pins the exact versions
the test suite and the demo are run with.
"""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithConfigs(build_py):
    """build_py that also ships the repository's ``configs/`` (``*.yaml`` and LazyConfig ``*.py``
    files) as ``segtron/model_zoo/configs``.

    ``segtron.model_zoo.get_config_file`` looks there in an installed copy (and in the
    checkout's ``configs/`` when run from source), so the configs live in one place in git.
    Editable installs import from the checkout and need no copy.
    """

    def _config_files(self):
        src = ROOT / "configs"
        dst = Path(self.build_lib) / "segtron" / "model_zoo" / "configs"
        # YAML configs and Python (LazyConfig) configs; the .py files are data, not modules.
        files = sorted(p for pattern in ("*.yaml", "*.py") for p in src.rglob(pattern))
        return [(p, dst / p.relative_to(src)) for p in files]

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for src, dst in self._config_files():
            self.mkpath(str(dst.parent))
            self.copy_file(str(src), str(dst))

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        return outputs + [str(dst) for _, dst in self._config_files()]


def read_version() -> str:
    for line in (ROOT / "segtron" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("segtron/__init__.py has no __version__ line")


setup(
    name="segtron",
    version=read_version(),
    description="Instance-segmentation research codebase with the Detectron2 API, pip-installable",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["segtron", "segtron.*"]),
    include_package_data=True,
    cmdclass={"build_py": BuildPyWithConfigs},
    install_requires=[
        # torchvision's compiled ops must match torch exactly: 0.29.x goes with 2.14.x.
        "torch>=2.14.1,<3",
        "torchvision>=0.29.1,<1",
        "fvcore>=0.1.5.post20221221,<0.2",
        "iopath>=0.1.7,<0.2",
        "pycocotools>=2.0.7",
        "faster-coco-eval>=1.6",
        "opencv-python-headless>=4.8",
        "Pillow>=10",
        "numpy>=1.24",
        "PyYAML>=6.0",
        "tabulate>=0.9",
        "termcolor>=2.0",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "tensorboard>=2.14",
        # The Cityscapes evaluators run its official evaluation scripts.
        "cityscapesscripts>=2.3.0,<3",
        "omegaconf>=2.1,<3",
        "timm>=0.9,<2",
        # tools/deploy/export_model.py --format onnx: torch's exporter writes through `onnx`,
        # and the exported file is checked by running it in onnxruntime.
        "onnx>=1.16,<2",
        "onnxruntime>=1.18,<2",
    ],
    extras_require={"dev": ["pytest>=8", "pytest-xdist>=3"]},
)
