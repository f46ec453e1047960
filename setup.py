"""Package layout that pyproject.toml cannot express: the top-level ``weights/`` and ``models/`` folders of the
consensus network ship inside the package as ``mbp_cli/shipped/{weights,models}``, so that a non-editable install
finds them (``mbp_cli.network.weights.shipped_dirs``). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

SHIPPED = {"mbp_cli.shipped.weights": "weights", "mbp_cli.shipped.models": "models"}

setup(
    packages=find_packages(include=["mbp_cli*"]) + list(SHIPPED),
    package_dir=SHIPPED,
    package_data={"mbp_cli.shipped.weights": ["*.safetensors"], "mbp_cli.shipped.models": ["*.json"]},
)
