"""Checkpoint integrity: sha256 of every file a step holds, recorded at save, checked before restore.

Orbax commits a step atomically (a half-written step is never listed) but reads back whatever bytes
are on disk: a few KiB of an array file overwritten by a bad disk, a copy tool or a bug restore as
wrong numbers, often without any error. `record` writes `<step>/checksums.json` (sha256 and size of
every file under the step's item directories) into the temporary step directory, after Orbax has
finalised the items and before it renames the directory, so the record is part of the same atomic
commit. `verify` re-hashes the files and raises `CheckpointCorruptError` naming the first file that
differs. `nonfinite_leaves` names restored arrays holding NaN or Inf, which a checksum cannot catch
(a NaN that was saved verifies).

Damage is only what can be named (a file missing, of another size or sha256, values not finite):
`CheckpointCorruptError`. A file that exists but cannot be read now (permissions, an I/O error, a
storage timeout) is `CheckpointReadError`: the step may be intact, so the caller must stop rather
than fall back to an older step (and later replace this one).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

CHECKSUM_FILE = "checksums.json"
_CHUNK = 1 << 22


class CheckpointCorruptError(ValueError):
  """A checkpoint step whose files differ from their recorded checksums, or whose values are not finite."""


class CheckpointReadError(RuntimeError):
  """A checkpoint file that exists but could not be read (permissions, I/O error, a storage timeout):
  not damage, so no step is skipped, deleted or replaced; the message names the file and the error."""


def short_cause(error: BaseException) -> str:
  """`Type: message` on one line, without TensorStore's spec dump, at most ~400 characters: the
  start (what failed) and the end (the OS error: why)."""
  cause = " ".join(f"{type(error).__name__}: {error}".split()).split(" [tensorstore_spec=")[0]
  if len(cause) > 400:
    cause = f"{cause[:150]} ... {cause[-230:]}"
  return cause


def read_error(path: Any, error: BaseException) -> CheckpointReadError:
  """CheckpointReadError naming `path` and `error`, saying that nothing was changed."""
  cause = short_cause(error)
  return CheckpointReadError(f"could not read {path} ({cause}); this is not damage the checksums "
                             f"name, so no checkpoint was skipped or deleted: fix the storage or the "
                             f"permissions and run the same command again")


def exists(path: Any) -> bool:
  """Whether `path` exists; a path that cannot be checked (permissions, I/O error) raises
  CheckpointReadError instead of reading as missing."""
  try:
    os.stat(os.fspath(path))
  except (FileNotFoundError, NotADirectoryError):
    return False
  except OSError as e:
    raise read_error(path, e) from e
  return True


def _sha256(path: epath.Path) -> tuple[str, int]:
  digest, size = hashlib.sha256(), 0
  try:
    with open(os.fspath(path), "rb") as f:
      while chunk := f.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
  except FileNotFoundError:
    raise
  except OSError as e:
    raise read_error(path, e) from e
  return digest.hexdigest(), size


def _walk(directory: epath.Path) -> list[epath.Path]:
  out = []
  for p in sorted(directory.iterdir()):
    out.extend(_walk(p) if p.is_dir() else [p])
  return out


def _files(step_dir: epath.Path, items: Iterable[str]) -> list[epath.Path]:
  out = []
  for item in items:
    if (step_dir / item).exists():
      out.extend(_walk(step_dir / item))
  return out


def record(step_dir: str | os.PathLike, items: Iterable[str]) -> dict[str, Any]:
  """Hashes every file under `step_dir/<item>` and writes `step_dir/checksums.json`; returns it."""
  step_dir = epath.Path(step_dir)
  files = {}
  for path in _files(step_dir, items):
    sha, size = _sha256(path)
    files[str(path.relative_to(step_dir))] = {"sha256": sha, "bytes": size}
  table = {"algorithm": "sha256", "files": files}
  (step_dir / CHECKSUM_FILE).write_text(json.dumps(table, indent=0, sort_keys=True))
  return table


def verify(step_dir: str | os.PathLike, items: Iterable[str] | None = None) -> bool:
  """Checks the files recorded in `step_dir/checksums.json` (those under `items`, default all).

  Returns False when the step has no record (saved before checksums existed); raises
  CheckpointCorruptError naming the file when one is missing, has another size or another sha256,
  CheckpointReadError when a file (or a directory above it) exists but cannot be read.
  """
  step_dir = epath.Path(step_dir)
  record_path = step_dir / CHECKSUM_FILE
  if not exists(record_path):
    return False
  try:
    with open(os.fspath(record_path)) as f:
      files = json.load(f)["files"]
  except FileNotFoundError:
    return False
  except OSError as e:
    raise read_error(record_path, e) from e
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointCorruptError(f"{record_path}: unreadable checksum record ({e})") from e
  prefixes = None if items is None else tuple(f"{item}/" for item in items)
  for name, expected in sorted(files.items()):
    if prefixes is not None and not name.startswith(prefixes):
      continue
    path = step_dir / name
    try:
      if not exists(path):
        raise FileNotFoundError(path)
      sha, size = _sha256(path)
    except FileNotFoundError:
      raise CheckpointCorruptError(f"{path}: missing (recorded in {CHECKSUM_FILE} at save)") from None
    if size != expected["bytes"]:
      raise CheckpointCorruptError(f"{path}: {size} bytes, {expected['bytes']} when saved")
    if sha != expected["sha256"]:
      raise CheckpointCorruptError(f"{path}: sha256 differs from the one recorded at save "
                                   f"(the file is damaged)")
  return True


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def nonfinite_leaves(tree: Any) -> list[str]:
  """Key paths of the floating-point arrays of `tree` that hold a NaN or an Inf."""
  flat = [(jax.tree_util.keystr(path), x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
          if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)]
  if not flat:
    return []
  flags = _finite_flags([x for _, x in flat])
  flags = np.asarray(flags.addressable_data(0)) if isinstance(flags, jax.Array) else np.asarray(flags)
  return [name for (name, _), ok in zip(flat, flags) if not ok]
