"""Fixtures of the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from small_scene import make_scene


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kermit000-003 and 005 with good and bad pairs (see :mod:`small_scene`)."""
    return make_scene(tmp_path_factory.mktemp("scene") / "kermit")
