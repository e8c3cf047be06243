"""Read what an offline W&B run recorded: the records of its ``run-<id>.wandb`` file.

The file is W&B's transaction log (what ``wandb sync`` uploads): a 7-byte header (``:W&B``, a
2-byte key, a version byte), then LevelDB-style 32 KiB blocks of chunks (crc32, length, type), whose
payloads joined are serialized ``wandb.proto`` ``Record`` messages. The W&B client no longer ships
a Python reader for it (its internal process is written in Go), so the tests read it with W&B's
own protobuf messages.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEADER = 7
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> Iterator[Any]:
    """Every ``Record`` of a ``run-<id>.wandb`` file, in order (each chunk's crc32 checked)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        assert zlib.crc32(bytes([kind]) + chunk) == crc, f"bad chunk crc at byte {pos} of {path}"
        pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def run_file(run_dir: Path) -> Path:
    """The one ``run-*.wandb`` of the one offline run under ``<run_dir>/wandb``."""
    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    return path


def artifacts(path: Path) -> list[Any]:
    return [r.artifact for r in records(path) if r.WhichOneof("record_type") == "artifact"]


def history(path: Path) -> dict[str, Any]:
    """The logged history values, ``nested/key/parts`` joined by "/" -> its last value (decoded)."""
    out: dict[str, Any] = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            for item in r.history.item:
                out["/".join(item.nested_key) if item.nested_key else item.key] = json.loads(item.value_json)
    return out
