"""Data for pre-training: bundled default data, any `datasets` source, resumable worker-side row transforms."""

from .default import DEFAULT_DATASET_NAME, load_default_dataset
from .images import UndecodableImageError, decode_image, to_rgb
from .loader import EmptyEpochError, TrainingBatches
from .loading import DatasetConfigurationError, check_columns, check_image_column, load_image_dataset, stream_source
from .stream import (
    BatchedRowStream,
    DecodeImageColumn,
    ResumableImageStream,
    ResumableRowStream,
    collate_samples,
)

__all__ = [
    "DEFAULT_DATASET_NAME",
    "BatchedRowStream",
    "DatasetConfigurationError",
    "DecodeImageColumn",
    "EmptyEpochError",
    "ResumableImageStream",
    "ResumableRowStream",
    "TrainingBatches",
    "UndecodableImageError",
    "check_columns",
    "check_image_column",
    "collate_samples",
    "decode_image",
    "load_default_dataset",
    "load_image_dataset",
    "stream_source",
    "to_rgb",
]
