import pytest


@pytest.fixture(autouse=True, scope="module")
def _single_thread(single_thread):
    """Every network test runs on one torch thread (see ``single_thread`` in tests/conftest.py)."""
