"""Data sources: image folders and parquet shards through `datasets`, map-style and streamed; corrupt images
are skipped and counted; empty or missing data gets one clear error."""

from __future__ import annotations

import pytest
import torch
from engine_data import CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, write_parquet

from dccnext_cli.classification.recipe import TrainRecipe
from dccnext_cli.data.loading import EpochBatchSampler, build_loader, decode_record, seeded, train_transform
from dccnext_cli.data.sources import open_split, parse_data
from dccnext_cli.errors import DataError


def _count(split, batch_size=8):
    from dccnext_cli.data.images import eval_transform

    batches = build_loader(split, eval_transform((32, 32)), batch_size, train=False,
                           samples_per_epoch=split.num_samples or 1000)
    seen = skipped = 0
    labels = []
    for images, y, s in batches.epoch(0):
        assert images.shape[1:] == (3, 32, 32)
        seen, skipped = seen + len(y), skipped + s
        labels += y.tolist()
    return seen, skipped, labels


@pytest.mark.parametrize("streaming", [False, True])
def test_imagefolder_with_corrupt_image(imagefolder_corrupt, streaming, caplog):
    source = parse_data(f"imagefolder:{imagefolder_corrupt}")
    split = open_split(source, "train", streaming=streaming)
    assert split.streaming is streaming and split.num_classes == CLASSES
    assert split.class_names == ["Dress", "Pullover", "T-shirt-top", "Trouser"]  # folder names, sorted
    seen, skipped, labels = _count(split)
    assert (seen, skipped) == (CLASSES * TRAIN_PER_CLASS, 1)
    assert sorted(set(labels)) == list(range(CLASSES))
    assert "broken.jpg" in caplog.text  # the warning names the file


@pytest.mark.parametrize("streaming", [False, True])
def test_parquet_shards_with_corrupt_image(parquet_corrupt, streaming):
    source = parse_data(f"parquet:{parquet_corrupt}/*.parquet")
    train = open_split(source, "train", streaming=streaming)
    assert (train.image_column, train.label_column) == ("image", "label")
    assert _count(train)[:2] == (CLASSES * TRAIN_PER_CLASS, 1)
    val = open_split(source, "validation", streaming=streaming)
    assert _count(val)[:2] == (CLASSES * VAL_PER_CLASS, 1)


def test_streamed_training_batches_shard_between_processes(imagefolder):
    split = open_split(parse_data(f"imagefolder:{imagefolder}"), "train", streaming=True)
    recipe = TrainRecipe(input_size=(32, 32), auto_augment=None, re_prob=0)
    seen = []
    for rank in range(2):
        batches = build_loader(split, train_transform(recipe), 4, train=True, rank=rank, world=2,
                               samples_per_epoch=split.num_samples)
        labels = [y for _, y, _ in batches.epoch(0)]
        assert len(labels) == batches.steps_per_epoch == CLASSES * TRAIN_PER_CLASS // 8
        seen.append(torch.cat(labels))
    assert not torch.equal(seen[0], seen[1])


def test_empty_split_is_a_clear_error(tmp_path):
    root = write_parquet(tmp_path / "pq", empty_validation=True)
    source = parse_data(f"parquet:{root}")
    for streaming in (False, True):
        with pytest.raises(DataError, match="split 'validation' of parquet:.* is empty"):
            open_split(source, "validation", streaming=streaming)


@pytest.mark.parametrize("form", ["folder", "glob", "nested_glob", "file"])
def test_parquet_splits_come_from_the_path_below_the_given_folder(tmp_path, form):
    from dccnext_cli.data.sources import _parquet_splits

    root = tmp_path / "test_eval_shards"  # split words in the folder's own name must not count
    (root / "val").mkdir(parents=True)
    for name in ("part-0.parquet", "part-1.parquet", "val/x-0.parquet", "test-0.parquet"):
        (root / name).write_bytes(b"")
    patterns = {"folder": str(root), "glob": f"{root}/*.parquet", "nested_glob": f"{root}/**/*.parquet",
                "file": str(root / "part-0.parquet")}
    splits = {k: sorted(v.rsplit("/", 2)[-1] for v in files)
              for k, files in _parquet_splits(patterns[form]).items()}
    want = {"folder": {"train": ["part-0.parquet", "part-1.parquet"], "validation": ["x-0.parquet"],
                       "test": ["test-0.parquet"]},
            "glob": {"train": ["part-0.parquet", "part-1.parquet"], "test": ["test-0.parquet"]},
            "file": {"train": ["part-0.parquet"]}}
    want["nested_glob"] = want["folder"]
    assert splits == want[form]


def test_missing_split_and_paths(imagefolder, tmp_path):
    with pytest.raises(DataError, match="folder .*nope does not exist"):
        parse_data(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="no .parquet file matches"):
        parse_data(f"parquet:{tmp_path}/*.parquet")
    with pytest.raises(DataError, match="not one of builtin:NAME"):
        parse_data("s3://bucket")
    with pytest.raises(DataError, match="no 'test' split"):
        open_split(parse_data(f"imagefolder:{imagefolder}"), "test")


def test_sampler_gives_disjoint_equal_shards_and_resumes_mid_epoch():
    shards = [list(EpochBatchSampler(50, 4, rank=r, world=2, seed=3)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6
    flat = [sum(s, []) for s in shards]
    assert not set(flat[0]) & set(flat[1])
    again = EpochBatchSampler(50, 4, rank=1, world=2, seed=3)
    again.set_epoch(0, skip_batches=2)
    assert list(again) == shards[1][2:]
    again.set_epoch(1)
    assert list(again) != shards[1]  # a new epoch, a new order


def test_augmentation_is_seeded_per_sample_and_randaugment_inc1_runs(imagefolder):
    """The paper's RandAugment (rand-m9-mstd0.5-inc1) with random erasing: runs (Pillow < 13, notes.md) and
    gives the same tensor for the same (seed, epoch, index) whatever ran before."""
    recipe = TrainRecipe(input_size=(64, 64))
    assert recipe.auto_augment == "rand-m9-mstd0.5-inc1"
    transform = train_transform(recipe)
    split = open_split(parse_data(f"imagefolder:{imagefolder}"), "train")
    image, _ = decode_record(split.dataset[0], split)
    outs = []
    for _ in range(2):
        with seeded(0, 1, 7):
            outs.append(transform(image.convert("RGB")))
        torch.rand(5)  # the caller's RNG moves on; the sample's does not
    assert outs[0].shape == (3, 64, 64) and torch.equal(outs[0], outs[1])
    with seeded(0, 2, 7):
        assert not torch.equal(transform(image.convert("RGB")), outs[0])
    state = torch.get_rng_state()
    with seeded(1, 2, 3):
        torch.rand(3)
    assert torch.equal(torch.get_rng_state(), state)
    # every RandAugment op at the paper's magnitudes, on a real image
    from timm.data.auto_augment import rand_augment_transform

    ops = rand_augment_transform("rand-m9-mstd0.5-inc1-n15", {"translate_const": 20})
    for _ in range(20):
        ops(image.convert("RGB").resize((64, 64)))


def test_resumed_stream_skips_what_was_seen(imagefolder):
    """A stream resumed mid-epoch yields only the rest of the epoch, starting past the consumed samples."""
    split = open_split(parse_data(f"imagefolder:{imagefolder}"), "train", streaming=True)
    recipe = TrainRecipe(input_size=(32, 32), auto_augment=None, re_prob=0, hflip=0)
    batches = build_loader(split, train_transform(recipe), 4, train=True, samples_per_epoch=split.num_samples)
    full = [y for _, y, _ in batches.epoch(0)]
    rest = [y for _, y, _ in batches.epoch(0, skip_batches=5)]
    assert len(full) == 12 and len(rest) == 7
    assert torch.equal(torch.cat(rest), torch.cat(full[5:]))  # same shuffle seed and epoch, one process
    again = [y for _, y, _ in batches.epoch(0)]  # the skip does not stick to later epochs
    assert len(again) == 12 and torch.equal(torch.cat(again), torch.cat(full))
