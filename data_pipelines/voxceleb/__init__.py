"""VoxCeleb1 speaker identification for the shared speech schema, on top of TFDS's builder.

Build with `python -m data_pipelines.corpora voxceleb --manual_dir ... --data_dir ...`; see
`builder.py` for the layout, the splits and what differs from TFDS's `voxceleb`.
"""
from data_pipelines.voxceleb.voxceleb_dataset_builder import (LANGUAGE, Voxceleb, read_split_list,
                                                      speaker_of)
