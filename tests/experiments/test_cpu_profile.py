"""experiments.cpu_profile: the CPU step's tables, and its argument checks."""
import re

import pytest

from experiments import cpu_profile


def test_cnn_profile_lists_both_convolutions_each_pass_and_counts_the_gemm_flops(capsys):
    rc = cpu_profile.main(["--model", "cnn", "--batch-size", "8", "--steps", "1", "--repeats", "1",
                           "--gemm-size", "64", "--no-torch"])
    out = capsys.readouterr().out
    assert rc == 0
    assert re.search(r"GEMM ceiling: \d+ GFLOP/s", out)
    assert "torch step" not in out
    convs = [ln.split() for ln in out.splitlines() if ln.startswith(("forward ", "backward "))]
    # the CNN's two 3x3 convolutions (3 -> 16 at 32x32, 16 -> 32 at 16x16), forward and backward, once a step
    assert sorted((c[0], c[-5]) for c in convs) == [("backward", "16"), ("backward", "32"),
                                                   ("forward", "16"), ("forward", "32")]
    assert all(float(c[-1]) == 1.0 for c in convs)
    m = re.search(r"GEMMs: [\d.]+ ms/step, ([\d.e+-]+) GFLOP/step", out)
    # the Linear layers' products (2048 -> 100 -> 10, three GEMMs each) are among them
    assert m and float(m.group(1)) >= 3 * 2 * 8 * (2048 * 100 + 100 * 10) / 1e9
    fc1 = [ln.split() for ln in out.splitlines() if ln.startswith("gemm") and "(8, 2048)" in ln and "(2048, 100)" in ln]
    assert len(fc1) == 1 and fc1[0][-1] == "1.0"


@pytest.mark.parametrize("argv, message", [(["--threads", "2"], "single-core reference"),
                                           (["--steps", "0"], "--steps must be at least 1")])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cpu_profile.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_convs_times_every_distinct_convolution_under_each_algorithm_once(capsys):
    """--convs on the CNN: its two convolutions, each under every algorithm numpy can be told to
    run with runs of the same algorithm measured once, the table's pick marked."""
    rc = cpu_profile.main(["--convs", "--model", "cnn", "--batch-size", "4", "--repeats", "1", "--no-torch"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(out) == 3
    for line, shape in zip(out[1:], ("3->16 3x3 s1 on 32x32", "16->32 3x3 s1 on 16x16")):
        assert line.startswith(shape + ": ")
        cells = line.split(": ", 1)[1].split("; ")
        algos = [c.split(": ")[0] for c in cells]
        assert sum(a.startswith("*") for a in algos) == 1
        names = [a.lstrip("*") for a in algos]
        assert len(set(names)) == len(names) == 3     # phase planes, channels innermost, per-image im2col
        assert all(re.fullmatch(r"[\d.]+ / [\d.]+", c.split(": ")[1]) for c in cells)
