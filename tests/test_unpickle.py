"""No code runs from a checkpoint a user is handed: an adapter's common.pt goes through torch's weights_only
loader, a torch_dist `.metadata` through an unpickler that admits only the classes DCP metadata is made of.

Each payload below would create a file when unpickled the old way (checked first, so the payload is live);
the commands refuse it with one error line, and the file never appears."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch

from cli_inprocess import hy3
from conftest import assert_one_error
from megatron_hy.errors import Hy3Error


class Payload:
    """Unpickling this runs `touch MARKER` (os.system) or opens MARKER for writing (open)."""

    def __init__(self, marker, how: str):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "system":
            return os.system, (f"touch {self.marker}",)
        return open, (self.marker, "w")


NAMES = {"system": "posix.system", "open": "io.open"}


def assert_live(load, marker) -> None:
    """The payload does what it says when loaded without restrictions; then the evidence is removed."""
    load()
    assert marker.exists()
    marker.unlink()


@pytest.fixture(scope="module")
def mcore_adapter(tiny_inner, tmp_path_factory):
    from megatron_hy.lora.tiny import write_tiny_adapter

    return write_tiny_adapter(tiny_inner, tmp_path_factory.mktemp("adapters") / "mcore", "mcore", saved_tp=2,
                              alpha=16.0)


def without_args_json(src, dst):
    """A copy of a torch_dist adapter whose settings can only come from common.pt."""
    shutil.copytree(src, dst)
    (dst / "args.json").unlink()
    return dst


@pytest.mark.parametrize("how", ["system", "open"])
@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
def test_payload_in_common_pt_is_refused(tiny_inner, mcore_adapter, tmp_path, capsys, how, fmt):
    marker = tmp_path / "pwned"
    adapter = without_args_json(mcore_adapter, tmp_path / "adapter")
    common = adapter / "iter_0000001" / "common.pt"
    state = {"args": Payload(marker, how), "iteration": 1}
    if fmt == "torch.save":
        torch.save(state, common)
        assert_live(lambda: torch.load(common, weights_only=False), marker)
    else:
        common.write_bytes(pickle.dumps(state, protocol=2))
        assert_live(lambda: pickle.loads(common.read_bytes()), marker)
    out = tmp_path / "out"
    for cmd in (["lora", "merge", "--base", tiny_inner, "--adapter", adapter, out],
                ["lora", "export-peft", "--adapter", adapter, "--base", tiny_inner, out]):
        assert_one_error(hy3(capsys, *cmd), str(common), "refused to unpickle", NAMES[how])
        assert not marker.exists() and not out.exists()


def test_settings_still_come_from_a_plain_common_pt(tiny_inner, mcore_adapter, tmp_path):
    """Without args.json, rank, alpha and the saving TP size are read from the args in common.pt (a Namespace)."""
    from megatron_hy.config import load_config
    from megatron_hy.formats.adapters import open_adapter

    cfg = load_config(tiny_inner)
    with_json = open_adapter(mcore_adapter, cfg)
    alone = open_adapter(without_args_json(mcore_adapter, tmp_path / "adapter"), cfg)
    assert (alone.rank, alone.alpha, alone.saved_tp) == (with_json.rank, with_json.alpha, with_json.saved_tp) \
        == (4, 16.0, 2)


def metadata_with(payload):
    """Real DCP metadata with the payload inside it, where a crafted file would put it."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

    return Metadata(state_dict_metadata={"x": BytesStorageMetadata(), "evil": payload})


@pytest.fixture(scope="module")
def mcore_model(tiny_inner, tmp_path_factory):
    from megatron_hy.convert.hf_to_mcore import hf_to_mcore

    out = tmp_path_factory.mktemp("models") / "mcore"
    hf_to_mcore(tiny_inner, out, quiet=True)
    return out


def with_payload_metadata(src, dst, payload):
    ck = shutil.copytree(src, dst)
    meta = ck / "iter_0000001" / ".metadata"
    meta.write_bytes(pickle.dumps(metadata_with(payload)))
    return ck, meta


@pytest.mark.parametrize("how", ["system", "open"])
def test_payload_in_dcp_metadata_is_refused(tiny_inner, mcore_model, mcore_adapter, tmp_path, capsys, how):
    marker = tmp_path / "pwned"
    model, model_meta = with_payload_metadata(mcore_model, tmp_path / "model", Payload(marker, how))
    adapter, adapter_meta = with_payload_metadata(mcore_adapter, tmp_path / "adapter", Payload(marker, how))
    assert_live(lambda: pickle.loads(model_meta.read_bytes()), marker)
    out = tmp_path / "out"
    for cmd, meta in ((["convert", "mcore-to-hf", model, out, "--hf-config", tiny_inner], model_meta),
                      (["lora", "merge", "--base", tiny_inner, "--adapter", adapter, out], adapter_meta)):
        assert_one_error(hy3(capsys, *cmd), str(meta), "refused to unpickle", NAMES[how])
        assert not marker.exists() and not out.exists()


def test_dcp_metadata_of_other_objects_is_refused(tmp_path):
    from megatron_hy.formats.dcp import load_metadata

    path = tmp_path / ".metadata"
    path.write_bytes(pickle.dumps({"not": "metadata"}))
    with pytest.raises(Hy3Error, match="not PyTorch distributed checkpoint metadata"):
        load_metadata(path)
    path.write_bytes(pickle.dumps(metadata_with(shutil.rmtree)))   # a class or function by name is refused
    with pytest.raises(Hy3Error, match="it names shutil.rmtree"):
        load_metadata(path)
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(Hy3Error, match="unreadable checkpoint metadata"):
        load_metadata(path)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_torch_dcp_writers_metadata_loads_as_pickle_reads_it(tmp_path):
    """What torch's own FileSystemWriter writes (dtypes, layouts, memory formats, bytes entries) is admitted whole."""
    import torch.distributed.checkpoint as dcp

    from megatron_hy.formats.dcp import load_metadata

    state = {"a": torch.randn(2, 3), "b": torch.zeros(4, dtype=torch.bfloat16), "c": torch.ones(1, dtype=torch.int64),
             "obj": {"any": "object"}}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp_path)), no_dist=True)
    path = tmp_path / ".metadata"
    ours, plain = load_metadata(path), pickle.loads(path.read_bytes())
    assert ours.state_dict_metadata == plain.state_dict_metadata and ours.storage_data == plain.storage_data
    assert ours.state_dict_metadata["b"].properties.dtype == torch.bfloat16


def _dcp_with_common_state(root, state):
    """A DCP directory holding only the `common_state` object as megatron-core 0.19 saves it (torch.save of
    [state] as one byte item; the same bytes a real 0.19 save holds, read in test_swift_megatron.py), no common.pt."""
    from megatron_hy.formats import dcp
    from megatron_hy.formats.torch_dist import COMMON_STATE

    root.mkdir()
    done = dcp.write_file(root / "__0_0.distcp", [], [dcp.ObjectItem(COMMON_STATE, [state])])
    dcp.write_metadata(root, [], [done])
    return root


def test_common_state_inside_the_checkpoint_is_read_without_running_code(tmp_path):
    """megatron-core 0.19 keeps the common state (the training args among it) as an object inside the DCP: it is
    read through the same restricted loader as common.pt, and a payload there is refused."""
    import io
    from argparse import Namespace

    from megatron_hy.formats.torch_dist import COMMON_STATE, load_common

    plain = _dcp_with_common_state(tmp_path / "plain", {"args": Namespace(tuner_type="lora", lora_rank=4), "iteration": 3})
    state, where = load_common(plain)
    assert vars(state["args"]) == {"tuner_type": "lora", "lora_rank": 4} and state["iteration"] == 3
    assert where == f"{plain} ({COMMON_STATE})"

    marker = tmp_path / "ran"
    bad = _dcp_with_common_state(tmp_path / "payload", {"args": Payload(marker, "system")})
    from megatron_hy.formats.dcp import DcpReader

    blob = DcpReader(bad).object_bytes(COMMON_STATE)
    assert_live(lambda: torch.load(io.BytesIO(blob), weights_only=False), marker)
    with pytest.raises(Hy3Error, match="refused to unpickle: it names posix.system"):
        load_common(bad)
    assert not marker.exists()
