"""Property-based round trips (hypothesis) over random tiny configs: layer patterns, expert and head counts,
dtypes (the router bias in fp32 or the weights' dtype), shard sizes, MTP on and off, padded vocabularies
and small copy/chunk limits; inner -> outer -> inner and HF -> torch_dist -> HF byte-exact for every
drawn config (tests/property_jobs.py)."""

from __future__ import annotations

import pytest

from megatron_hy.megatron.harness import run_distributed
from property_jobs import PLAIN, SMALL, property_round_trips

pytestmark = pytest.mark.megatron

MAX_EXAMPLES = 8


def test_round_trips_are_byte_exact_for_random_tiny_configs(tmp_path):
    res = run_distributed(property_round_trips, 1, str(tmp_path), MAX_EXAMPLES, timeout=600)[0]
    assert res["failure"] is None, res["failure"]
    checked = res["checked"]
    assert SMALL in checked and PLAIN in checked
    assert len(checked) >= MAX_EXAMPLES
