"""One run per workdir: an exclusive lock file, taken before anything is written into the workdir.

`<workdir>/run.lock` is created with O_EXCL and holds the holder's host, pid, process start time
and the time it was taken. A second run on the same workdir is refused with `WorkdirLocked`
naming the holder. A lock whose process is gone (same host, and no process with that pid and
start time) is stale: it is taken over with a WARNING. A lock held from another host cannot be
checked from here and is refused; the message says which file to delete if that run is gone.
On a multi-host run only process 0 takes the lock. Local (or mounted) workdirs only.

`check_workdir` refuses an empty --workdir, a path that is (or lies under) a file, and a directory
that cannot be written, with `WorkdirUnusable`, before anything is created; an error creating the
workdir or the lock file is reported the same way.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from typing import Iterator

LOCK_FILE = "run.lock"
logger = logging.getLogger(__name__)


class WorkdirLocked(RuntimeError):
  """Another live run holds the workdir."""


class WorkdirUnusable(ValueError):
  """--workdir is empty, a file, under a file, or cannot be written; the message says which."""


def check_workdir(workdir: str, flag: str = "--workdir") -> None:
  """WorkdirUnusable when `workdir` cannot be a run directory; creates nothing."""
  if not workdir or not workdir.strip():
    raise WorkdirUnusable(f"{flag} is empty: give the run's directory, e.g. {flag}=/tmp/xlsr_run "
                          f"(an empty value would train in the current directory)")
  path = os.path.abspath(os.path.expanduser(workdir))
  existing = path
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    what = "is a file" if existing == path else f"lies under {existing}, which is a file"
    raise WorkdirUnusable(f"{flag}={workdir} {what}, not a directory: use another {flag}")
  if not os.access(existing, os.W_OK | os.X_OK):
    where = "" if existing == path else f" (its nearest existing parent {existing})"
    raise WorkdirUnusable(f"{flag}={workdir}{where} cannot be written (permission denied or a "
                          f"read-only file system): use another {flag} or fix its permissions")


def _start_time(pid: int) -> str | None:
  """The process start time (clock ticks since boot, /proc/<pid>/stat field 22), None if unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start_time: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # exists, owned by someone else
  now = _start_time(pid)
  return start_time is None or now is None or now == start_time  # a reused pid is not the holder


def _holder() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(), "start_time": _start_time(os.getpid()),
          "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _describe(holder: dict) -> str:
  return (f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}")


def _write_exclusive(path: str, holder: dict) -> bool:
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    json.dump(holder, f)
  return True


def _read(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}


def acquire(workdir: str) -> str:
  """Takes `<workdir>/run.lock` (creating workdir); returns its path. Raises WorkdirLocked, or
  WorkdirUnusable when the workdir or the lock cannot be created (permissions, read-only, full)."""
  path = os.path.join(workdir, LOCK_FILE)
  me = _holder()
  for _ in range(3):
    try:
      os.makedirs(workdir, exist_ok=True)
      taken = _write_exclusive(path, me)
    except OSError as e:
      raise WorkdirUnusable(f"cannot use {workdir} as the run directory: could not create {path} "
                            f"({type(e).__name__}: {e.strerror or e}); use another --workdir or fix "
                            f"its permissions") from None
    if taken:
      return path
    holder = _read(path)
    if holder is None:  # released between our attempt and the read: try again
      continue
    same_host = holder.get("host") == me["host"]
    pid = holder.get("pid")
    if not holder or not isinstance(pid, int):
      raise WorkdirLocked(f"{workdir} is locked by {path}, which cannot be read; delete it if no "
                          f"run uses this workdir")
    if not same_host:
      raise WorkdirLocked(f"{workdir} is in use by {_describe(holder)} ({path}); this host cannot "
                          f"check that process: delete {path} if that run is gone")
    if _alive(pid, holder.get("start_time")):
      raise WorkdirLocked(f"{workdir} is in use by {_describe(holder)} ({path}); wait for it to "
                          f"finish or use another --workdir")
    logger.warning("%s: taking over the lock of %s, which is no longer running", workdir,
                   _describe(holder))
    print(f"warning: {path} was left by {_describe(holder)}, which is no longer running; "
          f"taking it over", flush=True)
    stale = f"{path}.stale-{os.getpid()}"
    try:
      os.rename(path, stale)  # only one of several racing runs renames this file
    except FileNotFoundError:
      continue
    if _read(stale) != holder:  # another run took it over between our read and our rename
      with contextlib.suppress(OSError):
        os.link(stale, path)
      os.remove(stale)
      continue
    os.remove(stale)
  raise WorkdirLocked(f"{workdir}: could not take {path} (other runs are racing for it)")


def release(path: str) -> None:
  """Removes the lock if this process holds it."""
  holder = _read(path)
  if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
    os.remove(path)


@contextlib.contextmanager
def hold(workdir: str, enabled: bool = True) -> Iterator[None]:
  """Holds the workdir's lock for the block; a workdir this created and left empty is removed."""
  if not enabled:
    yield
    return
  workdir = os.path.abspath(workdir)
  created = not os.path.exists(workdir)
  try:
    path = acquire(workdir)
  except BaseException:
    if created and os.path.isdir(workdir) and not os.listdir(workdir):
      os.rmdir(workdir)
    raise
  try:
    yield
  finally:
    release(path)
    if created and not os.listdir(workdir):
      os.rmdir(workdir)
