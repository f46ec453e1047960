import pytest

from mbp_cli.data.matches import load_scene_matches

from paths import SCENES


@pytest.fixture(scope="session")
def match_cache(tmp_path_factory):
    """Ratio-0.8 SIFT matches of the real kermit scene (9 images, 22 pairs), extracted once into a fresh cache."""
    cache = tmp_path_factory.mktemp("matches")
    load_scene_matches(SCENES / "kermit", 0.8, cache_dir=cache)
    return cache


@pytest.fixture(scope="session")
def kermit_pairs(match_cache):
    return load_scene_matches(SCENES / "kermit", 0.8, cache_dir=match_cache)
