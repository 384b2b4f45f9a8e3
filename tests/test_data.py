"""Data pipeline: bundled digits, RGB conversion of every mode, corrupt-sample skipping,
parquet / webdataset / imagefolder streaming, node splitting, exact resume of the stream."""

from __future__ import annotations

import io
import os
import tarfile

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_ssl.data import (
    DatasetConfigurationError,
    EmptyEpochError,
    ResumableImageStream,
    ResumableRowStream,
    TrainingBatches,
    UndecodableImageError,
    check_columns,
    collate_samples,
    decode_image,
    load_default_dataset,
    load_image_dataset,
    stream_source,
    to_rgb,
)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _grey_level_transform(image: Image.Image) -> dict[str, torch.Tensor]:
    """Identity-like transform: the image's mean grey level identifies a constant test image."""
    return {"pixel_values": torch.tensor([float(np.asarray(image)[..., 0].mean())])}


def _constant_images(count: int, size: int = 8) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), (level, level, level)) for level in range(count)]


# ----- bundled digits


def test_default_dataset_splits_are_disjoint_and_complete():
    train = load_default_dataset("train")
    test = load_default_dataset("test")
    assert len(train) == 1438 and len(test) == 359  # 1797 digits, 20% test
    assert train.column_names == ["image", "label", "caption"]
    image = train[0]["image"]
    assert image.mode == "RGB" and image.size == (32, 32)
    assert set(train["label"]) == set(range(10))
    train_pixels = {np.asarray(row["image"]).tobytes() for row in train}
    test_pixels = {np.asarray(row["image"]).tobytes() for row in test}
    assert not train_pixels & test_pixels


# ----- image modes


def test_to_rgb_converts_every_mode():
    grey = Image.new("L", (2, 2), 7)
    assert to_rgb(grey).getpixel((0, 0)) == (7, 7, 7)
    transparent = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)  # composited on white
    opaque = Image.new("RGBA", (2, 2), (10, 20, 30, 255))
    assert to_rgb(opaque).getpixel((0, 0)) == (10, 20, 30)
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert to_rgb(palette).getpixel((0, 0)) == (200, 100, 50)
    cmyk = Image.new("CMYK", (2, 2), (0, 0, 0, 0))
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 255, 255)
    # 16-bit: divide by 257 so that 65535 -> 255 and 25700 -> 100 (convert("L") would clip to 255).
    sixteen_bit = Image.fromarray(np.array([[65535, 25700]], dtype=np.uint16))
    assert sixteen_bit.mode == "I;16"
    assert to_rgb(sixteen_bit).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(sixteen_bit).getpixel((1, 0)) == (100, 100, 100)
    integer = Image.fromarray(np.array([[1028, 0]], dtype=np.int32))
    assert integer.mode == "I"
    assert to_rgb(integer).getpixel((0, 0)) == (4, 4, 4)  # 1028 / 257 = 4
    floating = Image.fromarray(np.array([[0.5, 1.0]], dtype=np.float32))
    assert to_rgb(floating).getpixel((0, 0)) == (128, 128, 128)  # 0.5 * 255 = 127.5 -> 128


def test_decode_image_reads_every_cell_kind_and_rejects_corrupt_ones(tmp_path):
    image = Image.new("RGB", (4, 4), (1, 2, 3))
    data = _png_bytes(image)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    for cell in (image, {"bytes": data, "path": None}, data, str(path), {"bytes": None, "path": str(path)}):
        assert decode_image(cell).getpixel((0, 0)) == (1, 2, 3)
    for corrupt in (None, b"not an image", {"bytes": None, "path": None}, data[: len(data) // 2]):
        with pytest.raises(UndecodableImageError):
            decode_image(corrupt)


def _rotated_jpeg(image: Image.Image, orientation: int) -> bytes:
    """JPEG bytes of `image` tagged with EXIF `orientation` (6: the viewer turns it 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def _awkward_images() -> dict[str, tuple[bytes, Image.Image]]:
    """``{kind: (file bytes, the RGB image every reader must see)}`` for files that decoded
    differently in training and evaluation: 16-bit grey, transparency, an EXIF-rotated photo."""
    levels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 4  # 8-bit levels 0..252
    sixteen_bit = Image.fromarray(levels * 257)  # the same levels at 16 bits (65535 = 255 * 257)
    assert sixteen_bit.mode == "I;16"
    transparent = Image.new("RGBA", (8, 8), (10, 20, 30, 255))
    transparent.paste((0, 0, 0, 0), (0, 0, 4, 8))  # left half fully transparent
    on_white = Image.new("RGB", (8, 8), (10, 20, 30))
    on_white.paste((255, 255, 255), (0, 0, 4, 8))
    photo = Image.new("RGB", (16, 8), (0, 0, 0))
    photo.paste((255, 255, 255), (8, 0, 16, 8))  # stored landscape, white on the right
    jpeg = _rotated_jpeg(photo, orientation=6)
    upright = Image.open(io.BytesIO(jpeg)).convert("RGB").transpose(Image.Transpose.ROTATE_270)  # 8 x 16, as shown
    return {
        "16-bit": (_png_bytes(sixteen_bit), Image.fromarray(levels.astype(np.uint8)).convert("RGB")),
        "transparent": (_png_bytes(transparent), on_white),
        "exif-rotated": (jpeg, upright),
    }


def test_training_decodes_16_bit_transparent_and_exif_rotated_files_as_they_look():
    for kind, (data, expected) in _awkward_images().items():
        decoded = decode_image({"bytes": data, "path": None})
        assert decoded.mode == "RGB" and decoded.size == expected.size, kind
        assert np.array_equal(np.asarray(decoded), np.asarray(expected)), kind


def test_evaluation_sees_every_image_as_training_does():
    """kNN scored chance on a 16-bit copy of a set it classified perfectly at 8 bits, because
    evaluation decoded with ``convert("RGB")`` (16-bit -> white, transparency -> black)."""
    from hf_ssl.backbones import default_image_processor
    from hf_ssl.eval.baselines import pixel_matrix
    from hf_ssl.eval.data import preprocess
    from hf_ssl.eval.zero_shot import embed_images

    images = _awkward_images()
    cells = [{"bytes": data, "path": None} for data, _ in images.values()]
    labelled = datasets.Dataset.from_dict(
        {"image": cells, "label": list(range(len(cells)))}, features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    )
    processor = default_image_processor(8)
    training = processor(images=[decode_image(cell) for cell in cells], return_tensors="pt")["pixel_values"]
    evaluation, labels = preprocess(labelled, processor)
    torch.testing.assert_close(evaluation, training)
    assert labels.tolist() == [0, 1, 2]

    class ImageTower(torch.nn.Module):  # get_image_features returns its input: the pixels zero-shot embeds
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def get_image_features(self, pixel_values):
            return pixel_values.flatten(1) * self.scale

    embedded = embed_images(ImageTower(), processor, labelled["image"])
    torch.testing.assert_close(embedded, torch.nn.functional.normalize(training.flatten(1), dim=-1))
    decoded = labelled.select(range(2))["image"]  # raw-pixel baseline (one size: the rotated photo differs)
    expected_pixels = np.stack([np.asarray(expected) for _, expected in list(images.values())[:2]]).reshape(2, -1) / 255.0
    torch.testing.assert_close(pixel_matrix(decoded), torch.from_numpy(expected_pixels.astype(np.float32)))


def test_decode_image_refuses_a_decompression_bomb_before_decoding_it(monkeypatch):
    """A single-colour 12000 x 12000 PNG is small on disk but 144 million pixels decoded."""
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000), 1).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 1_000_000

    def refuse_to_decode(self):
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", refuse_to_decode)
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(UndecodableImageError, match="12000 x 12000 = 144,000,000 pixels, above the"):
        decode_image({"bytes": buffer.getvalue(), "path": None})


# ----- streaming sources


def _levels_from_stream(source, **stream_arguments) -> tuple[list[int], int]:
    stream = ResumableImageStream(source, stream_arguments.pop("image_column", "image"), _grey_level_transform, **stream_arguments)
    levels, skipped = [], 0
    for sample in stream:
        if "pixel_values" in sample:  # else: the count of undecodable rows after the last sample
            levels.append(int(round(float(sample["pixel_values"][0]))))
        skipped += sample["skipped_samples"]
    return levels, skipped


def _write_parquet_shards(directory, cells: list, number_of_shards: int) -> list[str]:
    files = []
    for index in range(number_of_shards):
        part = datasets.Dataset.from_dict(
            {"image": cells[index::number_of_shards]}, features=datasets.Features({"image": datasets.Image()})
        )
        file = str(directory / f"train-{index:05d}.parquet")
        part.to_parquet(file)
        files.append(file)
    return files


def test_parquet_stream_skips_and_counts_corrupt_samples(tmp_path):
    cells = [{"bytes": _png_bytes(image), "path": None} for image in _constant_images(20)]
    cells[3] = {"bytes": b"\x89PNG broken", "path": None}
    cells[11] = {"bytes": _png_bytes(Image.new("RGB", (8, 8)))[:40], "path": None}  # truncated
    files = _write_parquet_shards(tmp_path, cells, number_of_shards=2)
    dataset = load_image_dataset("parquet", data_files=files, streaming=True)
    assert isinstance(dataset, datasets.IterableDataset)
    levels, skipped = _levels_from_stream(stream_source(dataset, "image"), shuffle_buffer_size=4)
    assert skipped == 2
    assert sorted(levels) == [level for level in range(20) if level not in (3, 11)]


def test_webdataset_shards_with_a_corrupt_image(tmp_path):
    files = []
    for shard in range(2):
        path = tmp_path / f"shard-{shard:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for index in range(6):
                level = shard * 6 + index
                payload = _jpeg_bytes(Image.new("RGB", (8, 8), (level * 20,) * 3))
                if level == 7:
                    payload = payload[:30]  # truncated JPEG
                for suffix, content in (("jpg", payload), ("cls", str(level).encode())):
                    info = tarfile.TarInfo(f"sample{level:04d}.{suffix}")
                    info.size = len(content)
                    tar.addfile(info, io.BytesIO(content))
        files.append(str(path))
    dataset = load_image_dataset("webdataset", data_files=files, streaming=True)
    levels, skipped = _levels_from_stream(stream_source(dataset, "jpg"), image_column="jpg", shuffle_buffer_size=5)
    assert skipped == 1
    # JPEG is lossy: grey level 20 * k comes back within a few units.
    assert sorted(round(level / 20) for level in levels) == [level for level in range(12) if level != 7]


def test_imagefolder_with_mixed_modes(tmp_path):
    for index, image in enumerate(
        [Image.new("L", (8, 8), 30), Image.new("RGBA", (8, 8), (40, 40, 40, 255)), Image.new("P", (8, 8), 0)]
    ):
        image.save(tmp_path / f"{index}.png")
    dataset = load_image_dataset("imagefolder", data_dir=str(tmp_path), streaming=True)
    levels, skipped = _levels_from_stream(stream_source(dataset, "image"))
    assert skipped == 0 and sorted(levels) == [0, 30, 40]


def test_missing_column_names_the_available_ones():
    dataset = load_default_dataset("test")
    with pytest.raises(DatasetConfigurationError, match=r"--image_column 'img' .*columns: image, label"):
        stream_source(dataset, "img")


def test_split_by_node_gives_disjoint_complete_parts():
    dataset = datasets.Dataset.from_dict({"image": _constant_images(40)}, features=datasets.Features({"image": datasets.Image()}))
    parts = [set(_levels_from_stream(stream_source(dataset, "image", rank=rank, world_size=2))[0]) for rank in (0, 1)]
    assert not parts[0] & parts[1]
    assert parts[0] | parts[1] == set(range(40))


def test_epochs_reshuffle_and_every_epoch_is_complete():
    dataset = datasets.Dataset.from_dict({"image": _constant_images(30)}, features=datasets.Features({"image": datasets.Image()}))
    stream = ResumableImageStream(stream_source(dataset, "image"), "image", _grey_level_transform, shuffle_buffer_size=30)
    orders = []
    for epoch in range(2):
        stream.set_epoch(epoch)
        orders.append([int(sample["pixel_values"][0]) for sample in stream])
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(30))
    assert orders[0] != orders[1]


def _grey_level_and_worker(image: Image.Image) -> dict[str, torch.Tensor]:
    return {**_grey_level_transform(image), "worker": torch.tensor(os.getpid())}


def test_workers_persist_across_epochs_and_each_epoch_reshuffles():
    """Workers used to start again every epoch: on a small dataset that is every few steps."""
    dataset = datasets.Dataset.from_dict({"image": _constant_images(32)}, features=datasets.Features({"image": datasets.Image()}))
    stream = ResumableImageStream(stream_source(dataset, "image", shards_per_process=2), "image", _grey_level_and_worker,
                                  shuffle_buffer_size=16)
    batches = TrainingBatches(stream, batch_size=4, num_workers=2)  # 2 workers x 16 rows: 8 batches per epoch
    epochs = [[next(batches) for _ in range(8)] for _ in range(2)]
    assert batches.epoch == 1
    levels = [[int(level) for batch in epoch for level in batch["pixel_values"][:, 0]] for epoch in epochs]
    assert sorted(levels[0]) == sorted(levels[1]) == list(range(32)) and levels[0] != levels[1]
    workers = [{int(pid) for batch in epoch for pid in batch["worker"]} for epoch in epochs]
    assert len(workers[0]) == 2 and workers[0] == workers[1]


def test_an_undecodable_sample_is_logged_with_its_file_or_row(caplog):
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": b"junk", "path": "holiday/IMG_0042.jpg"}, {"bytes": b"junk", "path": None}]},
        features=datasets.Features({"image": datasets.Image()}),
    )
    stream = ResumableImageStream(stream_source(dataset, "image", shards_per_process=1), "image", _grey_level_transform,
                                  shuffle_buffer_size=1)
    with caplog.at_level("WARNING", logger="hf_ssl.data.stream"):
        assert list(stream) == [{"skipped_samples": 2}]
    messages = [record.getMessage() for record in caplog.records]
    assert "its row 0): UnidentifiedImageError: holiday/IMG_0042.jpg: cannot identify image file" in messages[0]
    assert messages[1].endswith("its row 1): UnidentifiedImageError: cannot identify image file")


def test_all_corrupt_data_stops_with_a_clear_error():
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": b"junk", "path": None}] * 8}, features=datasets.Features({"image": datasets.Image()})
    )
    stream = ResumableImageStream(stream_source(dataset, "image"), "image", _grey_level_transform)
    with pytest.raises(EmptyEpochError, match="produced no batch of 2 rows .* 8 undecodable; every row is undecodable"):
        next(TrainingBatches(stream, batch_size=2, num_workers=0))


def test_fewer_rows_than_a_batch_names_the_flag_that_fixes_it():
    dataset = datasets.Dataset.from_dict({"image": _constant_images(5)}, features=datasets.Features({"image": datasets.Image()}))
    stream = ResumableImageStream(stream_source(dataset, "image"), "image", _grey_level_transform)
    with pytest.raises(EmptyEpochError, match="5 usable row.* fill no batch .*: lower --total_batch_size"):
        next(TrainingBatches(stream, batch_size=8, num_workers=0))


# ----- exact resume


def _light_stream(**arguments):
    from hf_ssl.transforms import build_transform

    dataset = load_default_dataset("test")
    source = stream_source(dataset, "image", shards_per_process=4)
    return ResumableImageStream(source, "image", build_transform("light", 32), seed=5, **arguments)


def _assert_resume_is_exact(num_workers: int, stop_after: int, total: int):
    uninterrupted = TrainingBatches(_light_stream(shuffle_buffer_size=50), batch_size=16, num_workers=num_workers)
    reference = [next(uninterrupted)["pixel_values"] for _ in range(total)]
    first = TrainingBatches(_light_stream(shuffle_buffer_size=50), batch_size=16, num_workers=num_workers)
    before = [next(first)["pixel_values"] for _ in range(stop_after)]
    state = first.state_dict()
    resumed = TrainingBatches(_light_stream(shuffle_buffer_size=50), batch_size=16, num_workers=num_workers)
    resumed.load_state_dict(state)
    after = [next(resumed)["pixel_values"] for _ in range(total - stop_after)]
    assert len(reference) == len(before + after)
    for index, (expected, actual) in enumerate(zip(reference, before + after)):
        assert torch.equal(expected, actual), f"batch {index} differs after resuming at batch {stop_after}"


def test_resume_is_exact_in_process_across_blocks_and_epochs():
    # 359 test digits / 16 = 22 batches per epoch; stop mid-block (50-row blocks), go into epoch 2.
    _assert_resume_is_exact(num_workers=0, stop_after=7, total=30)


@pytest.mark.slow
def test_resume_is_exact_with_worker_processes():
    _assert_resume_is_exact(num_workers=2, stop_after=9, total=30)


# ----- rows: several columns, a per-row transform, exact skipped counts


def _image_cell(level: int) -> dict:
    return {"bytes": _png_bytes(Image.new("RGB", (8, 8), (level,) * 3)), "path": None}


def _multicrop_row_transform(row: dict) -> dict[str, torch.Tensor]:
    """Decodes the encoded image itself; two views of different sizes plus the label."""
    if row["label"] < 0:
        raise KeyError("a bug in the transform, not a corrupt image")
    level = float(np.asarray(decode_image(row["image"]))[0, 0, 0])
    return {"global_crops": torch.full((2, 3, 4, 4), level), "local_crops": torch.full((3, 3, 2, 2), level),
            "label": torch.tensor(row["label"])}


def test_row_stream_gives_the_transform_raw_rows_and_stacks_each_key():
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64"), "caption": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict(
        {"image": [_image_cell(level) for level in range(6)], "label": list(range(6)), "caption": ["x"] * 6}, features=features
    )
    seen = []

    def transform(row):
        seen.append(row)
        return _multicrop_row_transform(row)

    stream = ResumableRowStream(stream_source(dataset, ["image", "label"]), ["image", "label"], transform)
    batch = next(TrainingBatches(stream, batch_size=3, num_workers=0))
    assert set(seen[0]) == {"image", "label"} and isinstance(seen[0]["image"]["bytes"], bytes)  # still encoded
    assert batch["global_crops"].shape == (3, 2, 3, 4, 4) and batch["local_crops"].shape == (3, 3, 3, 2, 2)
    assert sorted(batch["label"].tolist()) == sorted(int(level) for level in batch["global_crops"][:, 0, 0, 0, 0])
    assert collate_samples([{"count": 1}, {"count": 2}])["count"].tolist() == [1, 2]
    with pytest.raises(DatasetConfigurationError, match=r"column 'text' is not a column of the dataset; columns: image, label, caption"):
        stream_source(dataset, ["image", "text"])
    with pytest.raises(DatasetConfigurationError, match=r"'a', 'b' are not columns"):
        check_columns(dataset, ["a", "b"])


def test_other_transform_errors_stop_the_run():
    dataset = datasets.Dataset.from_dict({"image": [_image_cell(1)], "label": [-1]},
                                         features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
    stream = ResumableRowStream(stream_source(dataset, ["image", "label"]), ["image", "label"], _multicrop_row_transform)
    with pytest.raises(KeyError, match="a bug in the transform"):
        next(TrainingBatches(stream, batch_size=1, num_workers=0))


def _one_good_then_corrupt(corrupt: int) -> ResumableRowStream:
    dataset = datasets.Dataset.from_dict(
        {"image": [_image_cell(9)] + [{"bytes": b"junk", "path": None}] * corrupt},
        features=datasets.Features({"image": datasets.Image()}),
    )
    # One shard (its order cannot change between epochs) and shuffle_buffer_size=1: rows are read in
    # file order, so the good row comes first in every epoch.
    return ResumableImageStream(stream_source(dataset, "image", shards_per_process=1), "image", _grey_level_transform,
                                shuffle_buffer_size=1)


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_corrupt_rows_after_the_last_good_one_are_counted(num_workers):
    # 1 good + 44 corrupt rows, one row per batch: all 44 corrupt rows of an epoch follow its only
    # batch; they are reported with the next epoch's batch (with 2 workers, one has no rows at all).
    batches = TrainingBatches(_one_good_then_corrupt(44), batch_size=1, num_workers=num_workers)
    assert [int(next(batches)["skipped_samples"]) for _ in range(2)] == [0, 44]
    state = batches.state_dict()
    expected_next = int(next(batches)["skipped_samples"])
    resumed = TrainingBatches(_one_good_then_corrupt(44), batch_size=1, num_workers=num_workers)
    resumed.load_state_dict(state)
    assert expected_next == int(next(resumed)["skipped_samples"]) == 44
    with pytest.raises(DatasetConfigurationError, match=f"saved with --dataloader_num_workers {num_workers}, this run has 1"):
        TrainingBatches(_one_good_then_corrupt(44), batch_size=1, num_workers=1).load_state_dict(state)


def test_the_stream_reports_trailing_corrupt_rows():
    levels, skipped = _levels_from_stream(_one_good_then_corrupt(5).source, shuffle_buffer_size=1)
    assert levels == [9] and skipped == 5
