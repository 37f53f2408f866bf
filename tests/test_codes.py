"""fix_autoregressive_output and the calm-token trim, against the original's rules."""

import torch

from tortoise_xpu.pipeline.codes import CALM_TOKEN, fix_autoregressive_output, trim_length

STOP = 8193


def _original_fix(codes, stop):
    # the rule from anchors §4.7, written out longhand for one row
    codes = list(codes)
    if stop not in codes:
        return codes
    first = codes.index(stop)
    codes = codes[:first] + [CALM_TOKEN] * (len(codes) - first)
    codes[-3:] = [45, 45, 248]
    return codes


def test_fix_matches_rule_per_row():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 100, (6, 20), generator=g)
    codes[0, 5] = STOP
    codes[1, 19] = STOP
    codes[2, 0] = STOP
    codes[3, 7] = STOP
    codes[3, 9] = STOP
    out = fix_autoregressive_output(codes, STOP)
    for i in range(6):
        assert out[i].tolist() == _original_fix(codes[i].tolist(), STOP)
    assert not torch.equal(out, codes)  # works on a copy
    assert fix_autoregressive_output(codes[4], STOP).tolist() == codes[4].tolist()


def test_trim_at_ninth_calm_token():
    codes = torch.tensor([1, 2] + [CALM_TOKEN] * 8 + [3] + [CALM_TOKEN] * 12)
    # the first run has 8 (not more than 8): no cut; second run's 9th calm token is at 11 + 8 = 19
    assert trim_length(codes) == 19
    assert trim_length(torch.tensor([5] * 10)) == 10
