import csv
import shutil

import numpy as np
import pytest
import soundfile as sf

from spkrec.models.errors import DataError
from spkrec.training import data as datasets

from conftest import LIBRI, TRAIN_SPEAKERS, spkrec


def _csv_for(folder, path):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for speaker_dir in sorted(folder.iterdir()):
            for f in sorted(speaker_dir.iterdir()):
                writer.writerow([f.relative_to(path.parent), speaker_dir.name])


def test_csv_and_folder_layouts_give_the_same_dataset(tmp_path, speakers_dir):
    local = tmp_path / "data"
    shutil.copytree(speakers_dir, local, symlinks=False)
    manifest = tmp_path / "manifest.csv"
    _csv_for(local, manifest)
    from_folders = [(i.path.resolve(), i.label) for i in datasets.discover(local)]
    from_csv = [(i.path.resolve(), i.label) for i in datasets.discover(manifest)]
    assert from_folders == from_csv and len(from_folders) == 10 * len(TRAIN_SPEAKERS)


def test_any_rate_and_channels_are_decoded_to_mono_16k(tmp_path):
    src, rate = sf.read(next((LIBRI / "1688").glob("*.flac")))
    stereo_8k = np.stack([src[::2], src[::2]], axis=1)
    (tmp_path / "a").mkdir()
    sf.write(tmp_path / "a" / "x.wav", stereo_8k, rate // 2)
    clips = datasets.decode(datasets.discover(tmp_path), 16000)
    assert clips[0].samples.ndim == 1
    assert abs(clips[0].samples.size - src.size) < 64


def test_bad_files_are_skipped_with_names(tmp_path, speakers_dir):
    for speaker in TRAIN_SPEAKERS[:2]:
        shutil.copytree(speakers_dir / speaker, tmp_path / speaker)
    (tmp_path / "1688" / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage")
    (tmp_path / "1688" / "empty.flac").write_bytes(b"")
    sf.write(tmp_path / "1998" / "silent.wav", np.zeros(16000, np.float32), 16000)
    warnings = []
    clips = datasets.decode(datasets.discover(tmp_path), 16000, warn=warnings.append)
    assert len(clips) == 20
    text = "\n".join(warnings)
    for name in ("corrupt.wav", "empty.flac", "silent.wav"):
        assert name in text
    assert "skipped 3 of 23" in text


def test_too_few_speakers_is_an_error(tmp_path, speakers_dir):
    shutil.copytree(speakers_dir / "1688", tmp_path / "1688")
    with pytest.raises(DataError, match="at least 2 speakers"):
        datasets.require_speakers(datasets.decode(datasets.discover(tmp_path), 16000))


def test_split_is_stratified_and_reproducible(speakers_dir):
    clips = datasets.decode(datasets.discover(speakers_dir), 16000)
    train, val = datasets.split(clips, 0.2, seed=3)
    again_train, again_val = datasets.split(clips, 0.2, seed=3)
    assert [c.path for c in val] == [c.path for c in again_val]
    for speaker in TRAIN_SPEAKERS:
        assert sum(c.label == speaker for c in val) == 2 and sum(c.label == speaker for c in train) == 8
    assert {c.path for c in train}.isdisjoint(c.path for c in val)


def test_an_epoch_covers_each_file_about_once():
    rate, window = 16000, 32000
    clips = [datasets.Clip(None, "a", np.zeros(20 * rate, np.float32)), datasets.Clip(None, "b", np.zeros(3 * rate, np.float32))]
    counts = np.bincount(datasets.crops_per_epoch(clips, window))
    assert counts.tolist() == [10, 2]  # 20 s -> ten 2-s crops, 3 s -> two
    batches = list(datasets.epoch_batches(clips, window, 4, seed=0, epoch=0))
    assert batches == list(datasets.epoch_batches(clips, window, 4, seed=0, epoch=0))
    assert all(0 <= off <= clips[i].samples.size - window for b in batches for i, off in b)


def test_cli_errors_on_empty_folder_and_corrupt_only_data(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = spkrec("train", str(empty), "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and done.stderr.startswith("spkrec: error: no audio found")
    assert "Traceback" not in done.stderr

    bad = tmp_path / "bad"
    for speaker in ("a", "b"):
        (bad / speaker).mkdir(parents=True)
        (bad / speaker / "x.wav").write_bytes(b"not audio at all")
    done = spkrec("train", str(bad), "--out", str(tmp_path / "run2"))
    assert done.returncode == 2
    assert "skipped: cannot decode" in done.stderr and "x.wav" in done.stderr
    assert "need at least 2 speakers" in done.stderr and "Traceback" not in done.stderr


def test_decoded_audio_is_cached_and_an_edited_file_is_decoded_again(tmp_path):
    src = sorted((LIBRI / TRAIN_SPEAKERS[0]).glob("*.flac"))[0]
    audio, rate = sf.read(str(src), dtype="float32")
    path = tmp_path / "a" / "one.wav"
    path.parent.mkdir()
    sf.write(str(path), audio, rate)
    cache = tmp_path / "cache"
    first = datasets.load_cached(path, 16000, cache)
    assert len(list(cache.glob("*.npy"))) == 1
    again = datasets.load_cached(path, 16000, cache)
    assert isinstance(again, np.memmap) and np.array_equal(np.asarray(first), np.asarray(again))
    sf.write(str(path), audio[: rate * 2], rate)  # edited in place: size and mtime change
    edited = datasets.load_cached(path, 16000, cache)
    assert edited.size == 2 * 16000 and len(list(cache.glob("*.npy"))) == 2


def test_ranks_split_every_global_batch_between_them(speakers_dir):
    """Under torchrun each rank takes every world_size-th crop of the same seeded batch: together
    they see exactly what one process would."""
    from spkrec.training.loader import RunBatches

    clips = datasets.decode(datasets.discover(speakers_dir), 16000)
    index = {label: i for i, label in enumerate(TRAIN_SPEAKERS)}
    one = RunBatches(clips, 32000, 8, 0, index, first_epoch=0, epochs=2)
    ranks = [RunBatches(clips, 32000, 8, 0, index, 0, 2, rank=r, world_size=2) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == 2 * one.per_epoch
    for step in (0, one.per_epoch - 1, one.per_epoch):  # first, last of epoch 1, first of epoch 2
        whole = one._batch(step)
        assert sorted(ranks[0]._batch(step) + ranks[1]._batch(step)) == sorted(whole) and len(whole) == 8
        x, y = ranks[1][step]
        assert x.shape == (4, 32000) and y.shape == (4,)
    assert one._batch(0) != one._batch(one.per_epoch)  # a new epoch reshuffles
