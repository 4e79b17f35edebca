"""The paths a real-size checkpoint takes, forced on tiny files through CopyLimits: a tensor copied by
many `copy_file_range` calls (64 MiB each at real size), the pread/write loop used where the kernel
cannot copy, and a kernel that refuses part way through. Outputs byte-exact. (Row blocks and chunks of
HF <-> torch_dist set small are in test_round_trip_dtypes.py and test_round_trip_properties.py.)"""

from __future__ import annotations

import errno
import os
import threading

import pytest

from conftest import load_tensors, same_bits
from megatron_hy.convert.layout import convert_layout
from megatron_hy.formats.hf_checkpoint import HFCheckpoint
from megatron_hy.formats.safetensors_io import CopyLimits


class Calls:
    """Records the byte count of each call to os.copy_file_range or os.pread and passes the call on
    (fail_after: raise EXDEV from then on)."""

    def __init__(self, monkeypatch, name: str, fail_after: int | None = None):
        self.real, self.sizes, self.fail_after = getattr(os, name), [], fail_after
        self.count_arg = {"copy_file_range": 2, "pread": 1}[name]
        self.lock = threading.Lock()
        monkeypatch.setattr(os, name, self)

    def __call__(self, *args):
        with self.lock:
            self.sizes.append(args[self.count_arg])
            if self.fail_after is not None and len(self.sizes) > self.fail_after:
                raise OSError(errno.EXDEV, "Invalid cross-device link")
        return self.real(*args)


def assert_same(a, b) -> None:
    ta, tb = load_tensors(a), load_tensors(b)
    assert sorted(ta) == sorted(tb)
    assert [k for k in ta if not same_bits(ta[k], tb[k])] == []


def largest_source(root) -> int:
    ck = HFCheckpoint(root)
    return max(ck.source(n)[2] for n in ck.names())


@pytest.mark.parametrize("limits", [CopyLimits(chunk=4096), CopyLimits(kernel=False, buffer=1000)],
                         ids=["kernel-4KiB-calls", "pread-write-1000B"])
def test_small_copy_limits_round_trip_byte_exact(tiny_inner, tiny_outer, tmp_path, monkeypatch, limits):
    kernel, pread = Calls(monkeypatch, "copy_file_range"), Calls(monkeypatch, "pread")
    convert_layout(tiny_inner, tmp_path / "outer", "outer", workers=3, quiet=True, limits=limits)
    assert_same(tmp_path / "outer", tiny_outer)  # make-tiny fused the same model with torch
    convert_layout(tmp_path / "outer", tmp_path / "inner", "inner", workers=1, max_shard_size="60KB", quiet=True,
                   limits=limits)
    assert_same(tmp_path / "inner", tiny_inner)
    used, step = (kernel, limits.chunk) if limits.kernel else (pread, limits.buffer)
    assert (kernel.sizes == []) == (not limits.kernel)
    assert max(used.sizes) == step  # every call bounded, and the largest tensors took several
    assert len(used.sizes) > 2 * largest_source(tiny_inner) // step


def test_kernel_copy_refused_part_way_falls_back_byte_exact(tiny_inner, tiny_outer, tmp_path, monkeypatch):
    """As on a filesystem pair the kernel cannot copy between: copy_file_range fails (EXDEV) after a few calls."""
    kernel = Calls(monkeypatch, "copy_file_range", fail_after=5)
    pread = Calls(monkeypatch, "pread")
    convert_layout(tiny_inner, tmp_path / "outer", "outer", workers=2, quiet=True, limits=CopyLimits(chunk=2048))
    assert_same(tmp_path / "outer", tiny_outer)
    assert len(kernel.sizes) > 5 and len(pread.sizes) > 0
