"""The image size and batch of a run on the user's own data, from its first rows, where no one set them.

The recipes' defaults assume ImageNet on GPUs: 224-px inputs and batches of 256. On a folder of
200 small images they fail (a batch larger than the data) or crawl (DINO's 2 x 224 + 8 x 96 crops
of 64-px pictures). So, unless a flag, the YAML or a ``--preset`` sets them, and outside the
bundled data (whose defaults were measured):

- image size: the median shorter side of the first `SIZE_SAMPLE_ROWS` images, rounded to what
  every preset, patch and masking unit divides (16 px, 32 px from `SMALL_IMAGE_SIZE` up), at least
  32 px and at most the recipe's size. Backbone presets only: they are built at any size, while a
  checkpoint or a timm model keeps the recipe's;
- batch: the general default, or less for a small dataset: the largest power of two with which
  every DataLoader worker fills `BATCHES_PER_WORKER` batches per epoch (each worker batches its
  own shards and drops its last partial batch, which then holds under a quarter of its rows).

The rows are read as a stream (no download, no decoding beyond image headers) before any model is
built; reading stops once the dataset is known to be large enough for the default batch. The
reasons go into the plan the run prints at start.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from dataclasses import dataclass

from hf_ssl.backbones import is_preset
from hf_ssl.backbones.presets import SMALL_IMAGE_SIZE
from hf_ssl.data import DatasetConfigurationError, load_image_dataset, stream_source
from hf_ssl.data.images import UndecodableImageError, image_dimensions
from hf_ssl.recipes import get_recipe

from .arguments import GENERAL_RUN_DEFAULTS, PretrainingArguments
from .errors import ConfigurationError

SIZE_SAMPLE_ROWS = 64
BATCHES_PER_WORKER = 4
# Two-view losses need another image in the batch, and batch norm two rows.
SMALLEST_BATCH = 2
SMALLEST_IMAGE_SIZE = 32


@dataclass(frozen=True)
class DataSample:
    """What the first rows of the training split show.

    Args:
        sides: the shorter side of every readable image among the first `SIZE_SAMPLE_ROWS` rows.
        rows: the rows of the split (after ``--max_train_samples``), or None when there are more
            than were counted.
        first_error: why the first unreadable one among those rows could not be read.
    """

    sides: list[int]
    rows: int | None
    first_error: str | None = None


def sample_training_data(arguments: PretrainingArguments, image_column: str, count_up_to: int) -> DataSample:
    """Read the image sizes of the first rows of the training split and count its rows up to `count_up_to`.

    Raises:
        DatasetConfigurationError: the data cannot be opened, has no ``--image_column``, is empty,
            or none of its first rows is a readable image.
    """
    limit = count_up_to if arguments.max_train_samples is None else min(count_up_to, arguments.max_train_samples)
    dataset = load_image_dataset(arguments.dataset_name, dataset_config_name=arguments.dataset_config_name,
                                 data_dir=arguments.data_dir, data_files=arguments.data_files,
                                 split=arguments.train_split, streaming=True, cache_dir=arguments.cache_dir)
    sides, first_error, rows = [], None, 0
    for rows, row in enumerate(itertools.islice(stream_source(dataset, image_column), limit + 1), start=1):
        if rows <= SIZE_SAMPLE_ROWS:
            try:
                sides.append(min(image_dimensions(row[image_column])))
            except UndecodableImageError as error:
                first_error = first_error or str(error)
    if rows == 0:
        raise DatasetConfigurationError(f"the dataset's {arguments.train_split!r} split is empty")
    if not sides:
        raise DatasetConfigurationError(
            f"none of the first {min(rows, SIZE_SAMPLE_ROWS)} rows of --image_column {image_column!r} is a readable image "
            f"(the first: {first_error})"
        )
    return DataSample(sides=sides, rows=rows if rows <= limit else None, first_error=first_error)


def image_size_for(median_side: int, largest: int) -> int:
    """`median_side` rounded to the nearest multiple of 16 px (32 px from `SMALL_IMAGE_SIZE` up), within
    [`SMALLEST_IMAGE_SIZE`, `largest`]."""
    step = 32 if median_side >= SMALL_IMAGE_SIZE else 16
    return min(largest, max(SMALLEST_IMAGE_SIZE, (median_side + step // 2) // step * step))


def batch_size_for(rows: int, processes: int, workers: int, gradient_accumulation_steps: int, largest: int) -> int:
    """The total batch with which every worker of every process fills `BATCHES_PER_WORKER` batches
    per epoch: per-micro-batch rows a power of two, at least `SMALLEST_BATCH`; at most `largest`."""
    rows_per_worker = rows // (processes * max(workers, 1))
    per_micro_batch = SMALLEST_BATCH
    while per_micro_batch * 2 * BATCHES_PER_WORKER <= rows_per_worker:
        per_micro_batch *= 2
    return min(largest, per_micro_batch * processes * gradient_accumulation_steps)


def size_from_data(
    requested: PretrainingArguments, arguments: PretrainingArguments, method_arguments, world_size: int
) -> tuple[PretrainingArguments, dict[str, str]]:
    """`arguments` with the image size and batch chosen from the data where `requested` (the parsed
    arguments, before any default) left them unset.

    Returns:
        ``(arguments, {field: why})``, the reasons for the plan; unchanged arguments and no reasons
        on bundled data or when both values were set.
    """
    size_image = requested.image_size is None and is_preset(arguments.model)
    size_batch = requested.total_batch_size is None
    if arguments.uses_bundled_dataset or not (size_image or size_batch):
        return arguments, {}
    largest_batch = GENERAL_RUN_DEFAULTS["total_batch_size"]
    workers = max(arguments.dataloader_num_workers or 0, 1)
    image_column = get_recipe(arguments.method).columns(arguments, method_arguments)["image"]
    sample = sample_training_data(arguments, image_column, BATCHES_PER_WORKER * largest_batch * workers)
    sized, reasons = dataclasses.replace(arguments), {}
    if size_image:
        median_side = int(statistics.median(sample.sides))
        sized.image_size = image_size_for(median_side, largest=arguments.image_size)
        capped = " (the recipe's size; yours are larger)" if median_side >= arguments.image_size else ""
        reasons["image_size"] = f"median shorter side {median_side} px of the first {len(sample.sides)} images{capped}"
    if size_batch and sample.rows is not None:
        sized.total_batch_size = batch_size_for(sample.rows, world_size, arguments.dataloader_num_workers or 0,
                                                arguments.gradient_accumulation_steps, largest_batch)
        if sized.total_batch_size < largest_batch:
            reasons["total_batch_size"] = (f"{sample.rows} images: each of the {world_size * workers} DataLoader worker(s) "
                                           f"fills {BATCHES_PER_WORKER}+ batches per epoch")
    micro_batch = sized.total_batch_size // (world_size * sized.gradient_accumulation_steps)
    if sample.rows is not None and sample.rows // world_size < micro_batch:
        raise ConfigurationError(
            f"--total_batch_size {sized.total_batch_size}: the dataset's {sample.rows} rows fill no batch of {micro_batch} "
            f"per process; lower --total_batch_size (at most {sample.rows // world_size * world_size} here)"
        )
    return sized, reasons
