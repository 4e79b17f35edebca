"""Safetensors at the byte level: headers, checkpoint indexes, byte-range reads, streaming writes.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each key to
dtype, shape and [start, end) offsets into the data section, then the data. Reading a header is
cheap, so a whole 47k-tensor checkpoint is described without touching tensor data; tensors and
slices of tensors are then read or copied by byte range (`os.copy_file_range`: the kernel moves
the bytes, nothing passes through this process). Memory stays bounded by design.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Union

from ..dtypes import ITEMSIZE
from ..errors import Hy3Error

MAX_HEADER = 100 * 1024 * 1024
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
COPY_CHUNK = 64 * 1024 * 1024
# The largest tensor region held in memory at once: a chunk a converter writes, a block of rows it assembles,
# a piece of a tensor `hy3 check` scans.
CHUNK_BYTES = 64 * 1024 * 1024
FALLBACK_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class CopyLimits:
    """How write_shard copies file ranges: at most `chunk` bytes per `copy_file_range` call, and through a
    `buffer`-byte pread/write loop where the kernel cannot copy (or always, with kernel=False). Tests set
    them small to run the large-tensor paths on tiny files."""
    chunk: int = COPY_CHUNK
    buffer: int = FALLBACK_CHUNK
    kernel: bool = True


@dataclass(frozen=True)
class TensorInfo:
    key: str
    file: Path
    dtype: str
    shape: tuple
    start: int  # absolute byte offset in file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return ITEMSIZE[self.dtype]


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict]:
    """Parse and validate one safetensors header. Raises Hy3Error naming the file and key."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise Hy3Error(f"{path}: empty or truncated safetensors file ({size} bytes)")
            (hlen,) = struct.unpack("<Q", raw_len)
            if hlen > MAX_HEADER or 8 + hlen > size:
                raise Hy3Error(f"{path}: corrupt safetensors header (header length {hlen}, file size {size})")
            blob = f.read(hlen)
    except OSError as e:
        raise Hy3Error(f"{path}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(blob)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Hy3Error(f"{path}: corrupt safetensors header (not JSON: {e})") from None
    if not isinstance(header, dict):
        raise Hy3Error(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    base = 8 + hlen
    out: dict[str, TensorInfo] = {}
    for key, ent in header.items():
        try:
            dtype, shape, (s, e) = ent["dtype"], tuple(ent["shape"]), ent["data_offsets"]
            if not isinstance(dtype, str) or not all(_is_int(x) for x in (*shape, s, e)):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise Hy3Error(f"{path}: corrupt safetensors header entry for {key!r} "
                           "(expected dtype, shape and data_offsets [start, end], as integers)") from None
        if dtype not in ITEMSIZE:
            raise Hy3Error(f"{path}: {key}: unknown dtype {dtype!r}")
        want = math.prod(shape) * ITEMSIZE[dtype]
        if e - s != want or s < 0 or any(x < 0 for x in shape):
            raise Hy3Error(f"{path}: {key}: byte range [{s}, {e}) does not match shape {list(shape)} {dtype}")
        if base + e > size:
            raise Hy3Error(f"{path}: truncated: {key} needs bytes up to {base + e}, file has {size}")
        out[key] = TensorInfo(key, path, dtype, shape, base + s, base + e)
    ranges = sorted((t.start, t.end, t.key) for t in out.values() if t.nbytes)
    for (_, end, a), (start, _, b) in zip(ranges, ranges[1:]):
        if start < end:
            raise Hy3Error(f"{path}: corrupt safetensors header: the bytes of {a} and {b} overlap")
    return out, meta


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class Checkpoint:
    """A safetensors checkpoint directory described from its index and shard headers."""
    root: Path
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    weight_map: dict[str, str] = field(default_factory=dict)
    shard_files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    index_metadata: dict = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def open_checkpoint(root: str | Path, strict: bool = True) -> Checkpoint:
    """Read the index and every shard header. strict: raise on the first problem; else collect them."""
    root = Path(root)
    ck = Checkpoint(root)

    def problem(msg: str) -> None:
        if strict:
            raise Hy3Error(msg)
        ck.problems.append(msg)

    if not root.is_dir():
        raise Hy3Error(f"{root}: not a directory")
    on_disk = sorted(p.name for p in root.glob("*.safetensors"))
    _read_index(ck)
    files = sorted(set(ck.weight_map.values())) if ck.weight_map is not None else [SINGLE_NAME]
    ck.shard_files = files
    for name in sorted(set(on_disk) - set(files)):
        problem(f"{root / name}: orphan shard file, not referenced by {INDEX_NAME}")
    for name in files:
        _read_shard(ck, name, problem, strict)
    if ck.weight_map is None:
        ck.weight_map = {k: SINGLE_NAME for k in ck.tensors}
    else:
        for key, name in ck.weight_map.items():
            if key not in ck.tensors and (root / name).exists():
                problem(f"{root / name}: index lists {key} in this file, but the file does not contain it")
    return ck


def _read_index(ck: Checkpoint) -> None:
    """The index's weight map and metadata; weight_map None for a single model.safetensors."""
    index = ck.root / INDEX_NAME
    if index.exists():
        try:
            idx = json.loads(index.read_text())
            weight_map = idx["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise TypeError
            metadata = idx.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise TypeError
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise Hy3Error(f"{index}: not a valid index (expected JSON with a 'weight_map' object "
                           "mapping tensor names to shard file names)") from None
        ck.index_metadata = metadata
        ck.weight_map = dict(weight_map)
    elif (ck.root / SINGLE_NAME).exists():
        ck.weight_map = None  # filled from the single file
    else:
        raise Hy3Error(f"{ck.root}: no {INDEX_NAME} (and no single {SINGLE_NAME}); is this a safetensors checkpoint?")


def _read_shard(ck: Checkpoint, name: str, problem: Callable[[str], None], strict: bool) -> None:
    """One shard's header into ck.tensors, each tensor checked against the index."""
    path = ck.root / name
    if not path.exists():
        keys = [k for k, v in (ck.weight_map or {}).items() if v == name]
        problem(f"{path}: missing shard file (index lists {len(keys)} tensors in it, e.g. {keys[0] if keys else '?'})")
        return
    try:
        infos, _ = read_header(path)
    except Hy3Error as e:
        if strict:
            raise
        ck.problems.append(str(e))
        return
    if not infos:
        problem(f"{path}: shard holds no tensors")
    for key, info in infos.items():
        if ck.weight_map is not None and ck.weight_map.get(key) != name:
            where = ck.weight_map.get(key)
            problem(f"{path}: tensor {key} is not in the index" if where is None
                    else f"{path}: tensor {key} is indexed under {where}")
            if where is not None:
                continue
        if key in ck.tensors:
            problem(f"{path}: tensor {key} also appears in {ck.tensors[key].file.name}")
            continue
        ck.tensors[key] = info


# --- reading tensor bytes ------------------------------------------------------------------------

def read_bytes(path: Path, offset: int, nbytes: int) -> bytearray:
    buf = bytearray(nbytes)
    _read_into(path, offset, nbytes, memoryview(buf))
    return buf


_local = threading.local()


def read_array(path: Path, offset: int, nbytes: int, reuse: bool = False, drop_cache: bool = False):
    """Like read_bytes, into an uninitialized numpy uint8 array (large reads are hot paths).

    reuse: read into this thread's scratch buffer (valid until the thread's next reuse read).
    drop_cache: tell the kernel these file pages will not be read again.
    """
    import numpy as np

    if reuse:
        buf = getattr(_local, "buf", None)
        if buf is None or buf.nbytes < nbytes:
            buf = _local.buf = np.empty(max(nbytes, 1 << 20), dtype=np.uint8)
        arr = buf[:nbytes]
    else:
        arr = np.empty(nbytes, dtype=np.uint8)
    _read_into(path, offset, nbytes, memoryview(arr), drop_cache)
    return arr


def _read_into(path: Path, offset: int, nbytes: int, view: memoryview, drop_cache: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        got = 0
        while got < nbytes:
            n = os.preadv(fd, [view[got:]], offset + got)
            if n <= 0:
                raise Hy3Error(f"{path}: truncated at byte {offset + got}")
            got += n
        if drop_cache and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# --- streaming writes ----------------------------------------------------------------------------

# A source is a byte range of a file, bytes already in memory, or a function that makes the bytes.
Source = Union[tuple[Path, int, int], bytes, bytearray, memoryview, Callable[[], bytes]]


@dataclass
class OutTensor:
    key: str
    dtype: str
    shape: tuple
    sources: list[Source]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def _copy_range(src_fd: int, offset: int, nbytes: int, dst_fd: int, src_name, limits: CopyLimits) -> None:
    """Append bytes [offset, offset + nbytes) of src to dst: in the kernel when it can, else in small chunks."""
    done = 0
    kernel = limits.kernel
    while done < nbytes:
        got = 0
        if kernel:
            try:
                got = os.copy_file_range(src_fd, dst_fd, min(nbytes - done, limits.chunk), offset + done)
            except OSError:
                kernel = False  # not supported between these files: copy through a bounded buffer
        if got <= 0:
            data = os.pread(src_fd, min(nbytes - done, limits.buffer), offset + done)
            if not data:
                raise Hy3Error(f"{src_name}: truncated at byte {offset + done} (needed {offset + nbytes})")
            _write_all(dst_fd, data)
            got = len(data)
        done += got


def header_bytes(tensors: list[OutTensor], metadata: dict | None = None) -> bytes:
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    off = 0
    for t in tensors:
        header[t.key] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
        off += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob


def write_shard(path: Path, tensors: list[OutTensor], on_bytes=None, digest=None,
                limits: CopyLimits = CopyLimits()) -> None:
    """Write a safetensors file under a temporary name, stream every source in, then rename.

    digest: a hash object to update with every byte written; only for in-memory sources (bytes made
    here pass through this process; file ranges copied by the kernel do not)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fds: dict[Path, int] = {}
    try:
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:
        raise Hy3Error(f"{tmp}: cannot write ({e.strerror})") from None
    try:
        header = header_bytes(tensors)
        _write_all(dst, header)
        if digest is not None:
            digest.update(header)
        for t in tensors:
            written = 0
            for src in t.sources:
                if isinstance(src, tuple):
                    if digest is not None:
                        raise ValueError("write_shard: a digest needs in-memory sources")
                    file, off, n = src
                    if file not in fds:
                        fds[file] = _open_source(file)
                    _copy_range(fds[file], off, n, dst, file, limits)
                else:
                    data = src() if callable(src) else src  # a callable makes its bytes only when written
                    n = memoryview(data).nbytes
                    _write_all(dst, data)
                    if digest is not None:
                        digest.update(data)
                written += n
                if on_bytes:
                    on_bytes(n)
            if written != t.nbytes:
                raise Hy3Error(f"{path}: {t.key}: sources hold {written} bytes, shape needs {t.nbytes}")
        _flush(dst)
    except OSError as e:
        raise Hy3Error(f"{tmp}: write failed ({e.strerror})") from None
    finally:
        os.close(dst)
        for fd in fds.values():
            os.close(fd)
    os.replace(tmp, path)


def _flush(fd: int) -> None:
    """On disk before the final name appears (a resumed run trusts every finished shard, even after a
    crash); then out of the page cache, which the rest of a large conversion needs more."""
    os.fdatasync(fd)
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _open_source(file: Path) -> int:
    try:
        fd = os.open(file, os.O_RDONLY)
    except OSError as e:
        raise Hy3Error(f"{file}: cannot read ({e.strerror})") from None
    if hasattr(os, "posix_fadvise"):  # ranges are read front to back: let the kernel read ahead further
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return fd


def plan_shards(tensors: Iterable[OutTensor], max_bytes: int) -> list[list[OutTensor]]:
    """Pack tensors, in order, into shards of at most max_bytes (a larger tensor gets its own shard)."""
    shards: list[list[OutTensor]] = []
    cur: list[OutTensor] = []
    size = 0
    for t in tensors:
        if cur and size + t.nbytes > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += t.nbytes
    if cur:
        shards.append(cur)
    return shards


def shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def write_index(root: Path, weight_map: dict[str, str], total_size: int, extra_meta: dict | None = None) -> None:
    meta = {"total_size": total_size}
    meta.update(extra_meta or {})
    data = {"metadata": meta, "weight_map": dict(sorted(weight_map.items()))}
    tmp = root / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, root / INDEX_NAME)


def parse_size(text: str) -> int:
    """'5GB', '500MB', '4GiB', '1234' -> bytes."""
    s = str(text).strip().upper().replace(" ", "")
    units = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40,
             "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "K": 10**3, "M": 10**6, "G": 10**9, "B": 1}
    for u, mult in units.items():
        if s.endswith(u):
            num = s[: -len(u)]
            break
    else:
        num, mult = s, 1
    try:
        value = float(num)
    except ValueError:
        raise Hy3Error(f"cannot read size {text!r}; expected e.g. 5GB, 500MB, 4GiB") from None
    if value <= 0:
        raise Hy3Error(f"size {text!r} must be positive")
    return int(value * mult)
