"""Row-wise safetensors: one file concatenated from per-batch parts with one part in memory at a time,
and lazy, memory-mapped row reads of it.

Generated image sets reach 50k images (2.4 GB as float32 at 64x64x3): the sample stage's ranks each
write the batches they drew as parts, rank 0 joins them here into the one `samples.safetensors` every
later stage reads, and evaluation reads its rows in slices. The file is plain safetensors (safetensors'
own loaders read it whole, as before); it is written by hand only because the library cannot append.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from diffaudit.errors import DataError
from diffaudit.utils.io import METADATA_KEY, write_with

# Bytes per element of safetensors' dtypes (its format spec).
_ITEM_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


def _layout(parts: Sequence[Path]) -> dict[str, tuple[str, list[int]]]:
    """Per key: safetensors dtype and concatenated shape; every part must hold the same keys, dtypes and
    row shapes."""
    out: dict[str, tuple[str, list[int]]] = {}
    for part in parts:
        with safe_open(str(part), "pt") as f:
            keys = sorted(f.keys())
            if out and keys != sorted(out):
                raise DataError(f"{part}: holds {keys}, the first part {sorted(out)}")
            for k in keys:
                sl = f.get_slice(k)
                dtype, shape = sl.get_dtype(), list(sl.get_shape())
                if k not in out:
                    out[k] = (dtype, shape)
                    continue
                d0, s0 = out[k]
                if d0 != dtype or s0[1:] != shape[1:]:
                    raise DataError(
                        f"{part}: {k!r} is {dtype} {shape[1:]} per row, the first part's {d0} {s0[1:]}"
                    )
                out[k] = (d0, [s0[0] + shape[0], *s0[1:]])
    return out


def write_concatenated(
    path: str | Path, parts: Sequence[str | Path], metadata: dict[str, str] | None = None
) -> None:
    """Write `parts` (safetensors files with the same keys) as one safetensors file, each key's rows
    concatenated in the order of `parts`; atomically, with the metadata as `save_tensors` stores it.

    Identical parts give identical bytes (keys sorted, JSON sorted), so the file's hash depends only on
    the rows, not on how many processes drew them.
    """
    parts = [Path(p) for p in parts]
    if not parts:
        raise DataError(f"{path}: no parts to join")
    layout = _layout(parts)
    header: dict = {}
    offset = 0
    for k in sorted(layout):
        dtype, shape = layout[k]
        nbytes = torch.Size(shape).numel() * _ITEM_BYTES[dtype]
        header[k] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads its header to 8 bytes with spaces

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(raw)) + raw)
            for k in sorted(layout):
                for part in parts:
                    with safe_open(str(part), "pt") as f:
                        t = f.get_tensor(k).contiguous()
                    out.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())

    write_with(path, write)


class TensorRows:
    """The rows of one tensor in a safetensors file, read on demand (memory-mapped), as a tensor-like
    source: `len`, `shape`, and `rows[i:j]` or `rows[index]` give tensors.

    Args:
        path (`str` or `Path`): the safetensors file.
        key (`str`): the tensor in it.
    """

    def __init__(self, path: str | Path, key: str) -> None:
        self.path, self.key = Path(path), key
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} not found: run the stage that writes it first (dvc repro)")
        with safe_open(str(self.path), "pt") as f:
            names = sorted(f.keys())
            if key not in names:
                raise DataError(f"{self.path}: no tensor {key!r} (has {names})")
            self.shape = torch.Size(f.get_slice(key).get_shape())
        stat = self.path.stat()
        # What the feature cache keys the set by: the file and its version, not a hash of every pixel.
        self.fingerprint = f"{self.path.resolve()}:{key}:{stat.st_size}:{stat.st_mtime_ns}"

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, index: slice | int | torch.Tensor) -> torch.Tensor:
        with safe_open(str(self.path), "pt") as f:
            sl = f.get_slice(self.key)
            if isinstance(index, slice):
                start, stop, step = index.indices(len(self))
                rows = sl[start:stop]
                return rows[::step] if step != 1 else rows
            if isinstance(index, int):
                return sl[index : index + 1][0]
            idx = torch.as_tensor(index).reshape(-1).tolist()
            if not idx:
                return torch.empty((0, *self.shape[1:]), dtype=sl[0:1].dtype)
            return torch.cat([sl[i : i + 1] for i in idx])
