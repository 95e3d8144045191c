"""Every sampler draws the pinned codes (`tests/pinned_sampling.py`) for fixed seeds."""

import json

import pinned_sampling
import pytest


@pytest.fixture(scope="module")
def drawn():
    return pinned_sampling.compute()


def test_samplers_draw_the_pinned_codes(drawn):
    with open(pinned_sampling.PIN_FILE) as f:
        pinned = json.load(f)
    assert drawn and set(drawn) <= set(pinned)
    differ = [name for name in drawn if drawn[name] != pinned[name]]
    assert not differ, f"codes changed for {differ}"
