import torch

from mbp_cli.robust.samplers import ProsacSampler, UniformSampler


def test_uniform_samples_are_distinct_and_cover_all_points():
    sampler = UniformSampler(50, torch.Generator().manual_seed(0))
    idx = sampler.sample(2000)
    assert idx.shape == (2000, 5)
    assert (idx.sort(-1).values.diff(dim=-1) > 0).all()
    counts = torch.bincount(idx.flatten(), minlength=50).double()
    # each point is drawn 200 times on average; a uniform sampler stays within a few standard deviations
    assert counts.min() > 140 and counts.max() < 260


def test_prosac_starts_from_the_best_and_grows_to_all():
    quality = torch.arange(100, dtype=torch.float64)  # point 99 is the best
    sampler = ProsacSampler(quality, torch.Generator().manual_seed(0), max_growth_samples=5000)
    first = sampler.sample(1)
    assert set(first[0].tolist()) == {95, 96, 97, 98, 99}
    early = sampler.sample(20)
    # the t-th sample uses at most the top 5 + t points: the ranking is entered from the top, one point a step
    for t, row in enumerate(early, start=2):
        assert row.min() >= 100 - 5 - t
    growing = sampler.sample(200)
    assert (growing.sort(-1).values.diff(dim=-1) > 0).all()
    assert growing.double().mean() > 70  # uniform sampling would average 49.5
    late = sampler.sample(20_000)
    assert late.min() < 5  # eventually every point can be drawn
    assert (late.sort(-1).values.diff(dim=-1) > 0).all()


def test_samplers_are_deterministic_for_a_seed():
    a = UniformSampler(30, torch.Generator().manual_seed(3)).sample(10)
    b = UniformSampler(30, torch.Generator().manual_seed(3)).sample(10)
    assert torch.equal(a, b)
