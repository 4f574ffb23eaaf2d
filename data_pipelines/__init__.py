"""TFDS builders of the corpora and the input pipeline that reads them."""

# The one default TFDS data directory (relative to the working directory): the corpus builders
# write there and pretraining, downstream tasks and the benchmarks read there unless told otherwise.
DEFAULT_DATA_DIR = "data/tensorflow_datasets"
