"""Loading fairseq .pt checkpoints without fairseq and without running code from the pickle.

A pickle can call any importable function. This unpickler allows only the classes that rebuild
tensors and plain containers; the settings classes of fairseq checkpoints (omegaconf DictConfig,
argparse Namespace, fairseq enums and dataclasses) become inert stubs that just hold their state;
anything else is refused by name before it is imported.
"""
from __future__ import annotations

import pickle
import types
from typing import Any

ALLOWED = {
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_tensor"), ("torch", "Size"), ("torch", "device"),
    ("torch", "float32"), ("torch", "float16"), ("torch", "bfloat16"), ("torch", "int64"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("copyreg", "_reconstructor"), ("builtins", "object"), ("builtins", "dict"), ("builtins", "list"),
    ("builtins", "tuple"),
}
# Modules whose classes are settings, never behaviour: turned into inert stubs.
STUB_MODULE_PREFIXES = ("omegaconf", "argparse", "fairseq", "fairseq2", "enum", "typing", "pathlib",
                        "dataclasses")


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The pickle asked for a global that is neither a tensor-rebuild class nor a settings class."""


class InertStub:
  """Stands in for a settings class: records constructor arguments and pickled state, runs nothing."""

  def __init__(self, *args, **kwargs):
    self._stub_args = args
    self._stub_kwargs = kwargs
    self._stub_state = None

  def __setstate__(self, state):
    self._stub_state = state

  def __repr__(self):
    return f"<stub {type(self).__module__}.{type(self).__name__}>"


def _stub_class(module: str, name: str) -> type:
  return type(name, (InertStub,), {"__module__": module})


class SafeUnpickler(pickle.Unpickler):
  """pickle.Unpickler with an allow-list; see module docstring."""

  def find_class(self, module: str, name: str):
    if (module, name) in ALLOWED:
      return super().find_class(module, name)
    if module.split(".")[0] in STUB_MODULE_PREFIXES:
      return _stub_class(module, name)
    raise UnsafeCheckpointError(
        f"checkpoint pickle refers to {module}.{name}, which is not a tensor, container or settings "
        f"class; refusing to load it (it could run code)")


# torch.load(pickle_module=...) needs an object with Unpickler and load.
safe_pickle_module = types.SimpleNamespace(
    Unpickler=SafeUnpickler, load=lambda f, **kw: SafeUnpickler(f, **kw).load(),
    __name__="xlsr_jax_safe_pickle")


class CheckpointFileError(ValueError):
  """A file that cannot be read as the checkpoint it should be (truncated, another format)."""


def load_fairseq_checkpoint(path: str) -> dict[str, Any]:
  """torch.load of a fairseq .pt with the safe unpickler: {'model': state_dict, 'cfg'|'args': stubs}.

  A missing file raises FileNotFoundError, a truncated or non-PyTorch file CheckpointFileError,
  both naming the path; a pickle that asks for other code UnsafeCheckpointError.
  """
  import os
  import torch  # optional dependency, only needed to read .pt files
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file (expected a fairseq .pt checkpoint)")
  import zipfile
  try:
    # Zip-format files (torch.save's default) are memory-mapped: a 7B checkpoint's tensors are
    # read from the page cache as they are converted, not all copied into memory first.
    return torch.load(path, map_location="cpu", pickle_module=safe_pickle_module, weights_only=False,
                      mmap=zipfile.is_zipfile(path))
  except UnsafeCheckpointError:
    raise
  except pickle.UnpicklingError as e:
    if isinstance(e.__cause__, UnsafeCheckpointError) or "refusing to load" in str(e):
      raise UnsafeCheckpointError(str(e)) from e
    raise CheckpointFileError(_unreadable(path, e)) from e
  except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError) as e:
    raise CheckpointFileError(_unreadable(path, e)) from e


def _unreadable(path: str, error: Exception) -> str:
  import os
  size = os.path.getsize(path)
  return (f"{path} ({size:,} bytes): not a readable fairseq checkpoint; expected a PyTorch .pt "
          f"(zip or legacy pickle) holding 'model' and 'cfg' or 'args' (truncated or another "
          f"format? {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})")


def to_plain(obj: Any) -> Any:
  """Stubs of omegaconf / argparse objects -> plain dicts, lists and values (best effort)."""
  if isinstance(obj, InertStub):
    state = obj._stub_state
    if isinstance(state, dict):
      if "_content" in state:  # omegaconf DictConfig / ListConfig / ValueNode
        return to_plain(state["_content"])
      if "_val" in state:
        return to_plain(state["_val"])
      if "__dict__" in state:
        return to_plain(state["__dict__"])
      return {k: to_plain(v) for k, v in state.items() if not k.startswith("_")}
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
      return to_plain(state[1])
    if obj._stub_args:
      return to_plain(obj._stub_args[0]) if len(obj._stub_args) == 1 else [to_plain(a) for a in obj._stub_args]
    return None
  if isinstance(obj, dict):
    return {k: to_plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_plain(v) for v in obj]
  return obj
