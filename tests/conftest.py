import sys
from pathlib import Path

import pytest
import torch

# The synthetic-scene helper lives beside the tests.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread: on a busy 2-core machine, 2 OpenMP threads wait on each other and run up to 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
