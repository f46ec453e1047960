"""The match cache of posed scenes: built once, several ratios from one pass, equal to matching directly."""

import numpy as np
import pytest
import torch

from mbp_cli.data.matches import build_scene_matches, cache_path, load_scene_matches, scene_dirs
from mbp_cli.io.colmap import read_scene, relative_pose
from mbp_cli.io.images import load_image
from mbp_cli.matching import create_matcher

from paths import SCENES

KERMIT = SCENES / "kermit"
pytestmark = pytest.mark.skipif(not KERMIT.is_dir(), reason="the development scenes are not beside the repository")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("cache")
    build_scene_matches(KERMIT, [0.8, 0.95], cache_dir=root)
    return root


def test_stricter_ratio_is_the_subset_of_the_looser_and_equals_direct_matching(cache):
    strict = load_scene_matches(KERMIT, 0.8, cache_dir=cache)
    loose = load_scene_matches(KERMIT, 0.95, cache_dir=cache)
    scene = read_scene(KERMIT)
    assert len(strict) == len(loose) == len(scene.pairs)
    a, b = scene.pairs[0]
    matcher = create_matcher("sift", ratio=0.8)
    direct = matcher(load_image(scene.image_path(a)), load_image(scene.image_path(b)))
    first = strict[0]
    assert (first.image0, first.image1) == (a, b) and first.matcher == matcher.name
    np.testing.assert_array_equal(first.x0, scene.camera_of(a).pixels_to_normalized(direct.keypoints0).numpy())
    np.testing.assert_array_equal(first.side["ratio"], direct.side["ratio"].numpy())
    for key in ("scale_ratio", "scale0", "scale1"):
        np.testing.assert_array_equal(first.side[key], direct.side[key].numpy())
    keep = loose[0].side["ratio"] < 0.8
    np.testing.assert_array_equal(loose[0].x1[keep], first.x1)
    assert len(loose[0]) > len(first)
    R, t = relative_pose(scene, a, b)
    np.testing.assert_allclose(first.R, R)
    np.testing.assert_allclose(first.t, t / np.linalg.norm(t))


def test_a_cached_setting_is_read_not_rebuilt(cache):
    path = cache_path(cache, "kermit", create_matcher("sift", ratio=0.8).name)
    before = path.stat().st_mtime_ns
    pairs = load_scene_matches(KERMIT, 0.8, cache_dir=cache)
    assert path.stat().st_mtime_ns == before and len(pairs) == 22
    assert torch.is_tensor(torch.from_numpy(pairs[0].x0))


def test_a_cache_without_the_keypoint_scales_is_rebuilt(cache, tmp_path):
    """A cache written before the side information held the keypoint scales is stale: it is matched again."""
    name = create_matcher("sift", ratio=0.8).name
    fresh = np.load(cache_path(cache, "kermit", name))
    stale = cache_path(tmp_path, "kermit", name)
    stale.parent.mkdir(parents=True)
    np.savez(stale, **{k: fresh[k] for k in fresh.files if not k.startswith(("scale0_", "scale1_"))})
    pairs = load_scene_matches(KERMIT, 0.8, cache_dir=tmp_path)
    assert {"scale0", "scale1"} <= set(pairs[0].side)
    np.testing.assert_array_equal(pairs[0].side["scale0"], fresh["scale0_0"])


def test_scene_dirs_names_unknown_scenes():
    assert [p.name for p in scene_dirs(SCENES, ["kermit"])] == ["kermit"]
    with pytest.raises(ValueError, match="no scene nope"):
        scene_dirs(SCENES, ["nope"])
