"""ctypes binding to libespeak-ng from the `espeakng-loader` wheel: text -> 22,050 Hz int16 speech.

No system espeak and no network: the wheel ships the shared library and its data directory.

libespeak-ng keeps synthesis state in C globals that no API call resets (the pitch-flutter phase,
the automatic gain control, the roughness cycle counter), so the same text spoken twice in one
process comes out with different lengths and samples. Every call here therefore loads a fresh
copy of the library (dlopen, initialise, speak, terminate, dlclose) under a process-wide lock:
about 10 ms per call, and each utterance depends only on its own text, voice and seed.
"""
from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import dataclasses
import locale
import os
import re
import threading
from typing import Iterator

import espeakng_loader
import numpy as np

ESPEAK_SAMPLE_RATE = 22_050

# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EE_OK = 0
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of exit() when the data is unusable
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_PARAM_PUNCTUATION, _PARAM_CAPITALS, _PARAM_WORDGAP = 5, 6, 7

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.c_void_p)
_LOCK = threading.Lock()
_LANGUAGE_SWITCH = re.compile(r"\(([a-z]{2,3}(?:-[a-z0-9]+)*)\)")


@dataclasses.dataclass(frozen=True)
class Voice:
  """One espeak-ng speaker: a language voice, an optional variant (`espeak-ng-data/voices/!v`),
  base pitch 0..99 (espeak default 50), rate in words per minute 80..450 (175) and pitch range
  0..100 (50)."""
  language: str
  variant: str = ""
  pitch: int = 50
  rate: int = 175
  pitch_range: int = 50

  @property
  def espeak_name(self) -> str:
    """The name espeak_SetVoiceByName takes, e.g. "en+f3"."""
    return f"{self.language}+{self.variant}" if self.variant else self.language


def data_path() -> str:
  """The espeak-ng-data directory shipped by espeakng-loader."""
  return espeakng_loader.get_data_path()


def _declare(lib: ctypes.CDLL) -> None:
  lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
  lib.espeak_Initialize.restype = ctypes.c_int
  lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
  lib.espeak_SetSynthCallback.restype = None
  lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
  lib.espeak_SetVoiceByName.restype = ctypes.c_int
  lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
  lib.espeak_SetParameter.restype = ctypes.c_int
  lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
  lib.espeak_ng_SetRandSeed.restype = ctypes.c_int
  lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                               ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
  lib.espeak_Synth.restype = ctypes.c_int
  lib.espeak_Synchronize.restype = ctypes.c_int
  lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                        ctypes.c_int]
  lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
  lib.espeak_Terminate.restype = ctypes.c_int


@contextlib.contextmanager
def _fresh_library() -> Iterator[ctypes.CDLL]:
  """A freshly loaded, initialised libespeak-ng, unloaded again on exit (holds the lock)."""
  path = espeakng_loader.get_library_path()
  with _LOCK:
    saved_ctype = locale.setlocale(locale.LC_CTYPE)  # espeak_Initialize calls setlocale
    lib = ctypes.CDLL(path, mode=os.RTLD_LOCAL)
    try:
      _declare(lib)
      rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path().encode(),
                                   _INITIALIZE_DONT_EXIT)
      if rate != ESPEAK_SAMPLE_RATE:
        raise RuntimeError(f"espeak_Initialize({data_path()}) returned {rate}, expected sample "
                           f"rate {ESPEAK_SAMPLE_RATE}")
      yield lib
    finally:
      lib.espeak_Terminate()
      handle = lib._handle
      del lib
      _ctypes.dlclose(handle)
      locale.setlocale(locale.LC_CTYPE, saved_ctype)
    _check_unloaded(path)


def _check_unloaded(path: str) -> None:
  """Raise when libespeak-ng is still mapped after dlclose: its state would leak between calls."""
  try:
    still = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
  except OSError:
    return
  _ctypes.dlclose(still._handle)
  raise RuntimeError(
      f"{path} stayed loaded after dlclose, so espeak-ng state would leak between utterances: "
      "something else in this process holds the library (e.g. espeakng_loader.load_library() "
      "or a phonemizer); synthesise in a process that does not load it elsewhere")


def _set_voice(lib: ctypes.CDLL, voice: Voice) -> None:
  status = lib.espeak_SetVoiceByName(voice.espeak_name.encode())
  if status != _EE_OK:
    raise ValueError(f"espeak-ng has no voice {voice.espeak_name!r} (status {status}; data in "
                     f"{data_path()}: languages under lang/, variants under voices/!v)")
  for name, param, value, low, high in (("rate", _PARAM_RATE, voice.rate, 80, 450),
                                        ("pitch", _PARAM_PITCH, voice.pitch, 0, 99),
                                        ("pitch_range", _PARAM_RANGE, voice.pitch_range, 0, 100)):
    if not low <= value <= high:
      raise ValueError(f"{voice}: {name} = {value} is outside [{low}, {high}]")
    lib.espeak_SetParameter(param, value, 0)
  for param, value in ((_PARAM_VOLUME, 100), (_PARAM_PUNCTUATION, 0), (_PARAM_CAPITALS, 0),
                       (_PARAM_WORDGAP, 0)):
    lib.espeak_SetParameter(param, value, 0)


def synthesize(text: str, voice: Voice, seed: int = 0) -> np.ndarray:
  """Speak UTF-8 `text` with `voice`: int16 `[samples]` at 22,050 Hz.

  The result depends only on (text, voice, seed): `seed` drives espeak's breath-noise generator.
  Raises ValueError for an unknown voice and RuntimeError when espeak fails or returns no audio.
  """
  chunks: list[np.ndarray] = []

  def collect(wav, num_samples, events):  # called from inside espeak_Synth (same thread)
    del events
    if wav and num_samples > 0:
      chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
    return 0  # 0 = continue synthesis

  callback = _SynthCallback(collect)
  encoded = text.encode("utf-8") + b"\0"
  with _fresh_library() as lib:
    lib.espeak_SetSynthCallback(callback)
    _set_voice(lib, voice)
    lib.espeak_ng_SetRandSeed(seed & 0x7FFFFFFF)
    status = lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if status != _EE_OK:
      raise RuntimeError(f"espeak_Synth failed with status {status} for {voice}: {text!r}")
    lib.espeak_Synchronize()
  if not chunks:
    raise RuntimeError(f"espeak-ng produced no audio for {voice}: {text!r}")
  return np.concatenate(chunks).astype(np.int16, copy=False)


def text_to_phonemes(text: str, language: str) -> str:
  """espeak's phoneme transcription of `text` (its ASCII phoneme names), clauses joined by " "."""
  clauses = []
  with _fresh_library() as lib:
    _set_voice(lib, Voice(language))
    pointer = ctypes.c_char_p(text.encode("utf-8"))
    while pointer.value:
      result = lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, 0)
      clauses.append(result.decode("utf-8") if result else "")
  return " ".join(c for c in clauses if c)


def language_switches(phonemes: str) -> list[str]:
  """Languages espeak switched to inside a transcription (e.g. "(en)" markers): `["en"]`."""
  return _LANGUAGE_SWITCH.findall(phonemes)
