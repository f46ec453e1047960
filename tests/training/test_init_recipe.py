import pytest

from mbp_cli.training import init

from paths import SCENES


@pytest.mark.parametrize(
    ("blocks", "message"),
    [("a,b,c", "three counts"), ("2,2", "three counts"), ("2,-1,1", "bad network configuration")],
)
def test_bad_blocks_stop_with_one_line_before_any_work(blocks, message, tmp_path):
    argv = ["--scenes-root", str(SCENES), "--train", "kermit", "--val", "dino", "--name", "x", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match=message):
        init.main([*argv, "--blocks", blocks])
    assert not any(tmp_path.iterdir())  # nothing written
