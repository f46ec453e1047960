"""Where the tests find data: the shipped sample pair, and the development scenes in ``shared/`` beside the repo."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_images"
# CI clones the repository with shared/ beside it; MBP_SCENES points elsewhere when needed.
SCENES = Path(os.environ.get("MBP_SCENES", REPO.parent / "shared" / "data" / "scenes"))
