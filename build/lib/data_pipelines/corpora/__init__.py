"""TFDS builders for the XLS-R corpora and a user's own audio, read from manual_dir (no downloads).

Every builder writes the shared schema of `data_pipelines.features` with one split per
(split, language), skips unusable files into a build report, and is described in `base.py`.
Build from the command line with `python -m data_pipelines.corpora --help`.
"""
from data_pipelines.corpora.audio_manifest import AudioManifest
from data_pipelines.corpora.babel import Babel
from data_pipelines.corpora.base import CorpusBuilder, CorpusConfig, read_build_report
from data_pipelines.corpora.common_voice import CommonVoice, CommonVoiceConfig
from data_pipelines.corpora.covost2 import Covost2
from data_pipelines.corpora.multilingual_librispeech import MultilingualLibrispeech
from data_pipelines.corpora.voxlingua107 import Voxlingua107
from data_pipelines.corpora.voxpopuli import Voxpopuli

BUILDERS: dict[str, type[CorpusBuilder]] = {
    cls.name: cls for cls in (CommonVoice, Voxpopuli, MultilingualLibrispeech, Voxlingua107,
                              Babel, AudioManifest, Covost2)
}
