"""PyTorch Distributed Checkpoint (DCP) files, written and read one chunk at a time.

A DCP directory is data files (`__R_0.distcp`), each a run of items, and a pickled `.metadata`
saying, per key, the global size, dtype and chunks (offset, size) of a tensor, or that the key is
a byte object, and where each item lives (file, byte offset, length). A tensor item is the
`torch.save` of that chunk; a byte item is written as is (megatron-core stores its ShardedObjects
as the `torch.save` of a list of objects). `FileSystemReader` in torch reads exactly that, which
is what megatron-core's `dist_checkpointing.load` uses.

Here no tensor is ever whole in memory: the writer asks a callback for each chunk as it writes
it, and the reader reads only the chunks that overlap the region asked for.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import xxhash

from ..errors import Hy3Error

METADATA = ".metadata"


@dataclass
class Chunk:
    key: str
    offsets: tuple
    sizes: tuple
    make: Callable[[], "object"]  # returns the chunk as a torch tensor of exactly `sizes`


@dataclass
class TensorSpec:
    key: str
    size: tuple
    dtype: "object"  # torch dtype


@dataclass
class ObjectItem:
    unique_key: str
    objects: list


@dataclass
class FileResult:
    """Where each item of one finished data file is, kept beside it so a resumed run can reuse it."""
    name: str
    items: list = field(default_factory=list)  # (key, offsets, sizes, byte offset, length); objects: None offsets
    nbytes: int = 0
    xxh3: str = ""  # xxh3-128 of the file, hex


class _HashingWriter:
    """The file object torch.save writes into: every byte also goes into the checksum, none is copied."""

    def __init__(self, f, digest):
        self.f, self.digest = f, digest

    def write(self, data) -> int:
        self.digest.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def write_file(path: Path, chunks: list[Chunk], objects: list[ObjectItem], on_bytes=None) -> FileResult:
    """One data file: byte objects first, then tensor chunks, each torch.save'd straight into the file
    (as DCP's own writer does), then flushed to disk and dropped from the page cache.

    torch.save is told not to compute the zip CRC32 of each record (torch.load does not check it and
    it costs as much as the copy); the file's own checksum (xxh3-128) goes to the manifest instead.
    """
    import torch

    tmp = path.with_name(path.name + ".tmp")
    res = FileResult(path.name)
    digest = xxhash.xxh3_128()
    with open(tmp, "wb") as f:
        out = _HashingWriter(f, digest)

        def put(obj, key: str, offsets, sizes) -> None:
            start = f.tell()
            torch.save(obj, out)
            res.items.append((key, offsets, sizes, start, f.tell() - start))

        with _no_crc32():
            for obj in objects:
                put(obj.objects, obj.unique_key, None, None)
            for ch in chunks:
                t = ch.make()
                if tuple(t.shape) != tuple(ch.sizes):
                    raise Hy3Error(f"{ch.key}: chunk at {list(ch.offsets)} built as {list(t.shape)}, "
                                   f"expected {list(ch.sizes)}")
                t = t.contiguous()
                if t.untyped_storage().nbytes() != t.numel() * t.element_size():
                    t = t.clone()  # torch.save writes a view's whole storage; store only the chunk
                put(t, ch.key, tuple(ch.offsets), tuple(ch.sizes))
                if on_bytes:
                    on_bytes(t.numel() * t.element_size())
                del t
        f.flush()
        res.nbytes = f.tell()
        os.fdatasync(f.fileno())  # on disk before the final name appears; then out of the page cache
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    res.xxh3 = digest.hexdigest()
    sidecar = path.with_name(path.name + ".items.json")
    sidecar.write_text(json.dumps({"nbytes": res.nbytes, "xxh3_128": res.xxh3, "items": res.items}))
    os.replace(tmp, path)
    return res


_crc_lock = threading.Lock()
_crc_users = [0]


@contextlib.contextmanager
def _no_crc32():
    """torch.save without per-record CRC32 while any writer thread is inside; restored afterwards."""
    import torch

    with _crc_lock:
        if _crc_users[0] == 0:
            _crc_users.append(torch.serialization.get_crc32_options())
            torch.serialization.set_crc32_options(False)
        _crc_users[0] += 1
    try:
        yield
    finally:
        with _crc_lock:
            _crc_users[0] -= 1
            if _crc_users[0] == 0:
                torch.serialization.set_crc32_options(_crc_users.pop())


def read_file_result(path: Path) -> FileResult | None:
    """The item list of a data file a previous run finished, or None."""
    sidecar = path.with_name(path.name + ".items.json")
    if not path.exists() or not sidecar.exists():
        return None
    d = json.loads(sidecar.read_text())
    if d["nbytes"] != path.stat().st_size:
        return None
    items = [(k, tuple(o) if o is not None else None, tuple(z) if z is not None else None, s, n)
             for k, o, z, s, n in d["items"]]
    return FileResult(path.name, items, d["nbytes"], d["xxh3_128"])


def write_metadata(root: Path, tensors: list[TensorSpec], files: list[FileResult]) -> None:
    """The `.metadata` pickle that FileSystemReader (and so megatron-core) loads."""
    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                       MetadataIndex, StorageMeta, TensorProperties,
                                                       TensorStorageMetadata)

    specs = {t.key: t for t in tensors}
    chunks: dict[str, list] = {k: [] for k in specs}
    state: dict = {}
    storage: dict = {}
    for fr in files:
        for key, offsets, sizes, start, length in fr.items:
            if offsets is None:
                state[key] = BytesStorageMetadata()
                storage[MetadataIndex(key)] = _StorageInfo(fr.name, start, length)
                continue
            if key not in specs:
                raise Hy3Error(f"data file {fr.name} holds {key}, which the checkpoint plan does not have")
            index = len(chunks[key])
            chunks[key].append(ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes)))
            storage[MetadataIndex(key, torch.Size(offsets), index)] = _StorageInfo(fr.name, start, length)
    for key, spec in specs.items():
        if not chunks[key]:
            raise Hy3Error(f"no chunk of {key} was written")
        state[key] = TensorStorageMetadata(properties=TensorProperties(dtype=spec.dtype), size=torch.Size(spec.size),
                                           chunks=chunks[key])
    meta = Metadata(state_dict_metadata=state, planner_data=None, storage_data=storage,
                    storage_meta=StorageMeta(checkpoint_id=None, save_id=str(uuid.uuid4()), load_id=None),
                    version="1.0.0")
    tmp = root / (METADATA + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(meta, f)
    os.replace(tmp, root / METADATA)


# --- reading -------------------------------------------------------------------------------------

def _pread_all(path: Path, offset: int, length: int) -> bytes:
    """`length` bytes (fewer at end of file) as one bytes object, which BytesIO then shares without copying."""
    fd = os.open(path, os.O_RDONLY)
    try:
        parts, got = [], 0
        while got < length:
            b = os.pread(fd, length - got, offset + got)
            if not b:
                break
            parts.append(b)
            got += len(b)
        if hasattr(os, "posix_fadvise"):  # a converter reads each chunk once
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)


# What a DCP `.metadata` pickle is made of (torch's FileSystemWriter, megatron-core's save strategies,
# our write_metadata): the DCP metadata and save-plan classes, torch.Size, dtypes, layouts, paths. Nothing else
# is looked up while unpickling, so a crafted file cannot name a function to call.
_DCP_CLASSES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                              "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                                              "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.planner": {"SavePlan", "WriteItem", "WriteItemType", "TensorWriteData",
                                             "BytesIOWriteData"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo", "_StoragePrefix"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "collections": {"OrderedDict"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},  # StorageMeta.checkpoint_id
}
# Empty classes megatron-core keeps only so that old checkpoints unpickle; stand-ins here spare the import.
_MCORE_PLACEHOLDERS = ("megatron.core.dist_checkpointing.strategies.torch", {"MCoreMetadata", "MCoreSavePlan"})


class _Placeholder:
    """Holds the state of megatron-core's MCoreMetadata / MCoreSavePlan, which carry no behaviour."""


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, f, path: Path):
        super().__init__(f)
        self.path = path

    def find_class(self, module: str, name: str):
        import torch

        if name in _DCP_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == _MCORE_PLACEHOLDERS[0] and name in _MCORE_PLACEHOLDERS[1]:
            return _Placeholder
        raise Hy3Error(f"{self.path}: refused to unpickle: it names {module}.{name}, which is not part of "
                       f"PyTorch distributed checkpoint metadata; a checkpoint file must not run code")


def load_metadata(path: Path):
    """A DCP `.metadata` file, unpickled admitting only the classes DCP metadata consists of."""
    try:
        with open(path, "rb") as f:
            meta = _MetadataUnpickler(f, path).load()
    except Hy3Error:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise Hy3Error(f"{path}: unreadable checkpoint metadata ({type(e).__name__}: {e})") from None
    from torch.distributed.checkpoint.metadata import Metadata

    if not isinstance(meta, Metadata):
        raise Hy3Error(f"{path}: not PyTorch distributed checkpoint metadata (holds a {type(meta).__name__})")
    return meta


class DcpReader:
    """Random access to the tensors of a DCP directory, chunk by chunk."""

    def __init__(self, root: str | Path, cache_chunks: int = 4):
        root = Path(root)
        self.root = root
        path = root / METADATA
        if not path.exists():
            raise Hy3Error(f"{root}: no {METADATA}; not a torch_dist (PyTorch distributed checkpoint) directory")
        self.meta = load_metadata(path)
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.tensors = {k: v for k, v in self.meta.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
        self._where: dict = {}
        for idx, info in self.meta.storage_data.items():
            if idx.offset is not None:
                self._where[(idx.fqn, tuple(idx.offset))] = info
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_chunks
        self._lock = threading.Lock()

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple:
        return tuple(self._md(key).size)

    def dtype(self, key: str):
        return self._md(key).properties.dtype

    def _md(self, key: str):
        try:
            return self.tensors[key]
        except KeyError:
            raise Hy3Error(f"{self.root}: checkpoint has no tensor {key}") from None

    def _chunk(self, key: str, chunk):
        import torch

        ck = (key, tuple(chunk.offsets))
        with self._lock:
            if ck in self._cache:
                self._cache.move_to_end(ck)
                return self._cache[ck]
        info = self._where.get(ck)
        if info is None:
            raise Hy3Error(f"{self.root}: metadata lists a chunk of {key} at {list(chunk.offsets)} with no storage entry")
        blob = self._stored_bytes(info, f"chunk of {key}")
        path = self.root / info.relative_path
        try:
            t = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise Hy3Error(f"{path}: chunk of {key} at byte {info.offset} is corrupt ({type(e).__name__})") from None
        with self._lock:
            self._cache[ck] = t
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return t

    def object_bytes(self, key: str) -> bytes | None:
        """The stored bytes of a non-tensor item (a ShardedObject's unique key), or None when there is none."""
        info = next((v for k, v in self.meta.storage_data.items() if k.fqn == key and k.offset is None), None)
        if info is None:
            return None
        return self._stored_bytes(info, key)

    def _stored_bytes(self, info, what: str) -> bytes:
        path = self.root / info.relative_path
        try:
            blob = _pread_all(path, info.offset, info.length)
        except OSError as e:
            raise Hy3Error(f"{path}: cannot read ({e.strerror})") from None
        if len(blob) != info.length:
            raise Hy3Error(f"{path}: truncated; {what} needs bytes {info.offset}..{info.offset + info.length}")
        return blob

    def read(self, key: str, offsets: tuple, sizes: tuple):
        """The region [offsets, offsets + sizes) of a global tensor, from the chunks that overlap it."""
        import torch

        md = self._md(key)
        for ch in md.chunks:  # the common case: exactly one stored chunk
            if tuple(ch.offsets) == tuple(offsets) and tuple(ch.sizes) == tuple(sizes):
                return self._chunk(key, ch)
        out = torch.empty(sizes, dtype=md.properties.dtype)
        covered = 0
        for ch in md.chunks:
            lo = [max(a, b) for a, b in zip(offsets, ch.offsets)]
            hi = [min(a + s, b + t) for a, s, b, t in zip(offsets, sizes, ch.offsets, ch.sizes)]
            if any(h <= l for l, h in zip(lo, hi)):
                continue
            src = self._chunk(key, ch)
            src_idx = tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, ch.offsets))
            dst_idx = tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, offsets))
            out[dst_idx] = src[src_idx]
            n = 1
            for l, h in zip(lo, hi):
                n *= h - l
            covered += n
        want = 1
        for s in sizes:
            want *= s
        if covered != want:
            raise Hy3Error(f"{self.root}: chunks of {key} do not cover region {list(offsets)} + {list(sizes)}")
        return out
