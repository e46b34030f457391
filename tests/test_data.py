"""Loaders: fixtures written in the real on-disk formats, with downloading off.

- CIFAR-10/100: the python-pickle batches torchvision reads (`cifar-10-batches-py/data_batch_1`,
  ..., `cifar-100-python/train`, ...), pickled the way the originals were (Python 2 strings).
- ImageNette: `imagenette2-160/{train,val}/<wnid>/*.JPEG`, the layout torchvision expects.
- A folder of class folders with a corrupt JPEG and a text file among the images.

No test touches the network: where download=True is exercised, torchvision's download function
is replaced by one that fails the way an offline machine does.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from PIL import Image

from minidino.data import (
    DATASETS,
    BadImageWarning,
    DatasetSplit,
    download,
    load_dataset,
)
from minidino.resident import to_tensor_images
from minidino.shapes import SHAPE_CLASSES


# ---------------------------------------------------------------- CIFAR fixtures
class _Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """The CIFAR files are Python 2 pickles: their keys (b"data", b"labels") and the arrays' raw
    bytes are Python 2 `str`, which torchvision reads with encoding="latin1". A Python 3 pickler
    would write bytes as Python 3 bytes; this one writes them as Python 2 strings instead."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_str2(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_str2


def _dump_py2(obj: dict, path: Path) -> None:
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue())


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _batch(rng: np.random.Generator, n: int, n_classes: int, label_key: bytes) -> dict:
    return {b"batch_label": b"fixture", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: [int(x) for x in rng.integers(0, n_classes, n)],
            b"filenames": [b"img_%d.png" % i for i in range(n)]}


def _trust_fixture_md5(monkeypatch: pytest.MonkeyPatch, cls: type, folder: Path) -> None:
    """torchvision checks every file in `train_list + test_list` (and the meta file) against the
    md5 sums of the real download (`check_integrity(path, md5)`), even with download=False. The
    fixture's files are not the real ones, so the class is told the fixture's own md5 sums."""
    monkeypatch.setattr(cls, "train_list", [[n, _md5(folder / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, _md5(folder / n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


@pytest.fixture
def cifar10_root(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    """cifar-10-batches-py with 5 training batches of 3 images and a test batch of 4."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": _batch(rng, 3, 10, b"labels") for i in range(1, 6)}
    batches["test_batch"] = _batch(rng, 4, 10, b"labels")
    for name, batch in batches.items():
        _dump_py2(batch, folder / name)
    _dump_py2({b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": 3,
               b"num_vis": 3072}, folder / "batches.meta")
    return tmp_path, batches


@pytest.fixture
def cifar100_root(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    batches = {"train": _batch(rng, 7, 100, b"fine_labels"),
               "test": _batch(rng, 5, 100, b"fine_labels")}
    for name, batch in batches.items():
        batch[b"coarse_labels"] = [y // 5 for y in batch[b"fine_labels"]]
        _dump_py2(batch, folder / name)
    _dump_py2({b"fine_label_names": [b"class_%02d" % i for i in range(100)],
               b"coarse_label_names": [b"super_%02d" % i for i in range(20)]}, folder / "meta")
    return tmp_path, batches


def _no_network(*args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs as if offline: a download attempt fails like one with no network."""
    for module in (tvd.cifar, tvd.imagenette):
        monkeypatch.setattr(module, "download_and_extract_archive", _no_network)


# ---------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("split, files", [("train", [f"data_batch_{i}" for i in range(1, 6)]),
                                          ("test", ["test_batch"])])
def test_cifar10_images_labels_classes(cifar10_root, monkeypatch, split, files) -> None:
    root, batches = cifar10_root
    _trust_fixture_md5(monkeypatch, tvd.CIFAR10, root / "cifar-10-batches-py")
    data = load_dataset("cifar10", split=split, root=root, download=False)
    assert isinstance(data, DatasetSplit) and data.masks is None
    # the CIFAR layout: each row is 1024 red, then 1024 green, then 1024 blue, row-major 32 x 32
    rows = np.concatenate([batches[f][b"data"] for f in files])
    expected = torch.from_numpy(rows.reshape(-1, 3, 32, 32))
    assert data.images.dtype == torch.uint8 and torch.equal(data.images, expected)
    labels = [y for f in files for y in batches[f][b"labels"]]
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == labels
    assert data.classes == CIFAR10_NAMES
    image, label = data.dataset[2]
    assert torch.equal(image, expected[2]) and label == labels[2]
    assert len(data) == len(labels)


def test_cifar10_download_true_uses_files_already_there(cifar10_root, monkeypatch) -> None:
    root, _ = cifar10_root
    _trust_fixture_md5(monkeypatch, tvd.CIFAR10, root / "cifar-10-batches-py")
    data = load_dataset("cifar10", root=root, download=True)  # offline, yet nothing to fetch
    assert data.images.shape == (15, 3, 32, 32)
    download("cifar10", root)  # also a no-op


def test_cifar10_resized_like_torch_antialiased_bilinear(cifar10_root, monkeypatch) -> None:
    root, _ = cifar10_root
    _trust_fixture_md5(monkeypatch, tvd.CIFAR10, root / "cifar-10-batches-py")
    full = load_dataset("cifar10", split="test", root=root, download=False)
    small = load_dataset("cifar10", split="test", root=root, download=False, image_size=16)
    reference = torch.nn.functional.interpolate(full.images.float(), size=(16, 16),
                                                mode="bilinear", antialias=True)
    assert small.images.shape == (4, 3, 16, 16) and small.images.dtype == torch.uint8
    assert (small.images.float() - reference).abs().max() <= 1.0


def test_cifar100_fine_labels(cifar100_root, monkeypatch) -> None:
    root, batches = cifar100_root
    _trust_fixture_md5(monkeypatch, tvd.CIFAR100, root / "cifar-100-python")
    data = load_dataset("cifar100", split="test", root=root, download=False)
    assert data.labels.tolist() == batches["test"][b"fine_labels"]
    assert torch.equal(data.images,
                       torch.from_numpy(batches["test"][b"data"].reshape(-1, 3, 32, 32)))
    assert len(data.classes) == 100 and data.classes[7] == "class_07"


def test_cifar_missing_says_where_and_how(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", root=tmp_path / "nowhere", download=False)
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert "python -m minidino download cifar10 --root" in message


def test_cifar_corrupted_files_are_reported(cifar10_root) -> None:
    root, _ = cifar10_root  # the real md5 sums: the fixture files do not match them
    with pytest.raises(RuntimeError, match="corrupted") as err:
        load_dataset("cifar10", root=root, download=False)
    assert "cifar-10-batches-py" in str(err.value)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenette"])
def test_offline_download_error_is_wrapped(tmp_path, name) -> None:
    with pytest.raises(RuntimeError) as err:
        load_dataset(name, root=tmp_path, download=True)
    message = str(err.value)
    assert "could not download" in message and "name resolution" in message
    assert f"python -m minidino download {name}" in message
    with pytest.raises(RuntimeError, match="could not download"):
        download(name, tmp_path)


# ---------------------------------------------------------------- ImageNette
WNIDS = {"n01440764": "tench", "n03888257": "parachute"}


def _write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (24, 16)
                 ) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def imagenette_root(tmp_path: Path) -> Path:
    colours = [(200, 30, 30), (30, 30, 200)]
    for split, n in (("train", 3), ("val", 2)):
        for colour, wnid in zip(colours, WNIDS, strict=True):
            for i in range(n):
                _write_image(tmp_path / "imagenette2-160" / split / wnid / f"{wnid}_{i}.JPEG",
                             colour)
    return tmp_path


def test_imagenette_lazy_then_resident(imagenette_root) -> None:
    data = load_dataset("imagenette", split="val", root=imagenette_root, download=False)
    assert data.images is None and data.classes == list(WNIDS.values())
    assert data.labels.tolist() == [0, 0, 1, 1]
    image, label = data.dataset[3]
    assert isinstance(image, Image.Image) and image.size == (24, 16) and label == 1

    small = load_dataset("imagenette", split="test", root=imagenette_root, download=False,
                         image_size=8, resident=True)  # "test" is the held-out "val" split
    assert small.dataset[0][0].size == (8, 8)
    assert small.images.shape == (4, 3, 8, 8) and small.images.dtype == torch.uint8
    mean = small.images.float().mean((2, 3))  # (4, 3): red images, then blue ones
    assert (mean[:2, 0] > 150).all() and (mean[2:, 2] > 150).all()

    train = load_dataset("imagenette", root=imagenette_root, download=True)  # present: no fetch
    assert len(train) == 6


def test_imagenette_missing_says_where_and_how(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("imagenette", root=tmp_path, download=False)
    assert str(tmp_path / "imagenette2-160") in str(err.value)
    assert "python -m minidino download imagenette" in str(err.value)


def test_to_tensor_images_resizes_shorter_side_and_crops_centre() -> None:
    """A 3:1 image of three colour bands: resized to height 6 and centre-cropped, only the middle
    band (blue) remains, up to the blurred columns next to its edges."""
    bands = Image.new("RGB", (60, 20), (255, 0, 0))
    bands.paste((0, 0, 255), (20, 0, 40, 20))
    bands.paste((0, 255, 0), (40, 0, 60, 20))
    out = to_tensor_images([(bands, 0), (bands.transpose(Image.Transpose.ROTATE_90), 0)], 6,
                           progress=False)
    assert out.shape == (2, 3, 6, 6) and out.dtype == torch.uint8
    blue = torch.tensor([0, 0, 255]).view(3, 1, 1)
    assert (out[0, :, :, 1:5].int() - blue).abs().max() <= 2
    assert (out[1, :, 1:5, :].int() - blue).abs().max() <= 2


# ---------------------------------------------------------------- a folder of images
@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    for i in range(3):
        _write_image(root / "cat" / f"cat_{i}.png", (250, 250, 250))
        _write_image(root / "dog" / f"dog_{i}.png", (10, 10, 10))
    jpeg = io.BytesIO()
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(jpeg, format="JPEG")
    broken = root / "cat" / "broken.jpg"
    broken.write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])  # cut off mid-file
    with Image.open(broken) as image:  # the header is intact: only decoding finds the damage
        assert image.size == (64, 64)
    (root / "dog" / "notes.txt").write_text("not an image\n")
    (root / "dog" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored silently
    return root


def _bad_names(records: list[warnings.WarningMessage]) -> list[str]:
    return sorted(Path(str(r.message).split("'")[1]).name for r in records
                  if issubclass(r.category, BadImageWarning))


def test_folder_skips_bad_files_lazily_reporting_each_once(folder) -> None:
    # holdout=0.5 puts every second file of a class, in name order, in the held-out split:
    # cat/broken.jpg lands in "train", dog/notes.txt in "test"
    splits = [load_dataset("folder", split=s, path=folder, holdout=0.5) for s in ("train", "test")]
    assert all(d.classes == ["cat", "dog"] and d.images is None for d in splits)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        items = [d.dataset[i] for _ in range(2) for d in splits for i in range(len(d.dataset))]
    assert all(isinstance(image, Image.Image) for image, _ in items)
    assert _bad_names(records) == ["broken.jpg", "notes.txt"]  # once each, in two epochs
    assert all(image.getpixel((0, 0)) == ((250,) * 3 if y == 0 else (10,) * 3)
               for image, y in items)  # a skipped file gives another sample with its own label


def test_folder_scan_drops_bad_files_up_front(folder) -> None:
    with pytest.warns(BadImageWarning) as records:
        train = load_dataset("folder", split="train", path=folder, scan=True, holdout=0.5)
        test = load_dataset("folder", split="test", path=folder, scan=True, holdout=0.5)
    assert _bad_names(list(records)) == ["broken.jpg", "notes.txt"]
    names = [p.name for p, _ in train.dataset.samples] + [p.name for p, _ in test.dataset.samples]
    assert sorted(names) == sorted([f"cat_{i}.png" for i in range(3)] +
                                   [f"dog_{i}.png" for i in range(3)])  # disjoint, complete
    assert train.labels.tolist() == [y for _, y in train.dataset.samples]


def test_folder_error_mode_names_the_file(folder) -> None:
    data = load_dataset("folder", path=folder, on_bad_file="error", holdout=0.5)
    with pytest.raises(ValueError, match="broken.jpg"):
        for i in range(len(data.dataset)):
            data.dataset[i]
    with pytest.raises(ValueError, match=r"notes\.txt.*on_bad_file='skip'"):
        load_dataset("folder", split="test", path=folder, on_bad_file="error", scan=True,
                     holdout=0.5)


def test_folder_with_split_folders_and_resident_images(tmp_path) -> None:
    for split, colour in (("train", (255, 0, 0)), ("val", (0, 255, 0))):
        for name in ("a", "b"):
            _write_image(tmp_path / split / name / "x.png", colour, size=(12, 10))
    val = load_dataset("folder", split="test", path=tmp_path, image_size=8, resident=True)
    assert val.images.shape == (2, 3, 8, 8) and torch.equal(val.labels, torch.tensor([0, 1]))
    assert (val.images[:, 1] == 255).all()  # the green images: the "val" folder
    only_train = tmp_path / "only_train"
    _write_image(only_train / "train" / "a" / "x.png", (1, 2, 3))
    with pytest.raises(ValueError, match=r"split='test'.*split folders \['train'\]"):
        load_dataset("folder", split="test", path=only_train)


def test_folder_bad_paths(tmp_path) -> None:
    with pytest.raises(ValueError, match="path="):
        load_dataset("folder")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_dataset("folder", path=tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no class folders"):
        load_dataset("folder", path=tmp_path / "flat")


# ---------------------------------------------------------------- shapes and bad input
def test_shapes_through_load_dataset() -> None:
    train = load_dataset("shapes", n_images=20, difficulty="medium", seed=3)
    test = load_dataset("shapes", split="val", n_images=20, difficulty="medium", seed=3)
    assert train.classes == list(SHAPE_CLASSES) and train.masks.shape == (20, 32, 32)
    assert not torch.equal(train.images, test.images)
    big = load_dataset("shapes", split="test", n_images=10, image_size=64)
    assert big.images.shape == (10, 3, 64, 64) and big.dataset[0][0].shape == (3, 64, 64)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"name": "mnist"}, ValueError, "name='mnist'.*" + ", ".join(DATASETS)),
    ({"name": "shapes", "split": "validation"}, ValueError, "split='validation'"),
    ({"name": "shapes", "colour": "red"}, ValueError, r"\['colour'\].*'shapes'"),
    ({"name": "cifar10", "difficulty": "easy"}, ValueError, r"\['difficulty'\]"),
    ({"name": "shapes", "image_size": 0}, ValueError, "image_size=0"),
    ({"name": "shapes", "on_bad_file": "ignore"}, ValueError, "on_bad_file='ignore'"),
    ({"name": "imagenette", "resident": True}, ValueError, "resident=True needs image_size"),
    ({"name": "cifar10", "path": "photos"}, ValueError, "path='photos' is for dataset 'folder'"),
])
def test_bad_input_messages(kwargs, error, words) -> None:
    with pytest.raises(error, match=words):
        load_dataset(**kwargs)


def test_download_bad_names(tmp_path) -> None:
    assert set(DATASETS) == {"shapes", "scenes", "cifar10", "cifar100", "imagenette", "folder"}
    download("shapes", tmp_path)  # built in: nothing to do
    download("scenes", tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="nothing to download"):
        download("folder", tmp_path)
    with pytest.raises(ValueError, match="name='svhn'"):
        download("svhn", tmp_path)


def test_subset_indices_keep_every_class_of_a_class_sorted_list():
    from minidino.data import subset_indices

    labels = torch.arange(10).repeat_interleave(100)  # sorted by class, as a folder lists files
    chosen = subset_indices(1000, 50, seed=0)
    assert chosen.shape == (50,) and torch.equal(chosen, chosen.sort().values)
    assert len(chosen.unique()) == 50 and set(labels[chosen].tolist()) == set(range(10))
    assert torch.equal(chosen, subset_indices(1000, 50, seed=0))  # deterministic
    assert not torch.equal(chosen, subset_indices(1000, 50, seed=1))
    assert torch.equal(subset_indices(7, None), torch.arange(7))
    assert torch.equal(subset_indices(7, 100), torch.arange(7))
