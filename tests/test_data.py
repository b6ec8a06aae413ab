"""Data: idx parsing, finding the files in every supported layout, the offline error, batching."""

from __future__ import annotations

import gzip
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from vae_utils import data as data_module
from vae_utils.data import (
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    DatasetNotFoundError,
    IdxFormatError,
    ImageDataset,
    load_dataset,
    read_idx,
)

_TYPE_CODES = {torch.uint8: 0x08, torch.int8: 0x09, torch.int16: 0x0B, torch.int32: 0x0C,
               torch.float32: 0x0D, torch.float64: 0x0E}


def idx_bytes(tensor: torch.Tensor) -> bytes:
    """The idx encoding of ``tensor``: magic, big-endian int32 dims, big-endian data."""
    header = bytes([0, 0, _TYPE_CODES[tensor.dtype], tensor.dim()])
    header += b"".join(int(d).to_bytes(4, "big") for d in tensor.shape)
    body = tensor.contiguous().view(torch.uint8).view(-1, tensor.element_size()).flip(-1).reshape(-1)
    return header + bytes(body.tolist())


def write_idx(path: Path, tensor: torch.Tensor, gz: bool) -> Path:
    raw = idx_bytes(tensor)
    path = Path(f"{path}.gz") if gz else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def make_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g), torch.randint(
        0, 10, (n,), dtype=torch.uint8, generator=g
    )


def write_dataset(folder: Path, gz: bool, n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict:
    """Write the four idx files into ``folder``; returns the tensors written."""
    splits = {"train": make_split(n_train, seed), "test": make_split(n_test, seed + 1)}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = splits[split]
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return splits


@pytest.fixture
def no_default_data(tmp_path, monkeypatch):
    """Point every default location at empty folders, so only what a test writes can be found."""
    monkeypatch.setattr(data_module, "SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.setattr(data_module, "CACHE_DIR", tmp_path / "cache")
    empty_env = tmp_path / "env"
    empty_env.mkdir()
    monkeypatch.setenv("VAE_DATA_DIR", str(empty_env))
    return tmp_path


# ---------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.float32, torch.float64])
def test_read_idx_round_trip(tmp_path, gz, dtype):
    g = torch.Generator().manual_seed(1)
    tensor = (torch.randn(5, 3, 4, generator=g) * 100).to(dtype)
    path = write_idx(tmp_path / "x-idx3", tensor, gz)
    out = read_idx(path)
    assert out.dtype == dtype and out.shape == (5, 3, 4)
    assert torch.equal(out, tensor)


def test_read_idx_returns_independent_copies(tmp_path):
    path = write_idx(tmp_path / "labels", torch.arange(7, dtype=torch.uint8), gz=False)
    first = read_idx(path)
    first[:] = 0
    assert torch.equal(read_idx(path), torch.arange(7, dtype=torch.uint8))


def test_read_idx_sees_a_rewritten_file(tmp_path):
    path = write_idx(tmp_path / "labels", torch.arange(7, dtype=torch.uint8), gz=False)
    read_idx(path)
    write_idx(tmp_path / "labels", torch.arange(9, dtype=torch.uint8), gz=False)
    assert read_idx(path).shape == (9,)


@pytest.mark.parametrize(
    "corrupt, words",
    [
        (lambda raw: raw[: len(raw) - 10], "truncated"),
        (lambda raw: raw[:6], "truncated"),
        (lambda raw: raw + b"\0\0", "longer than its header"),
        (lambda raw: b"\x12\x34" + raw[2:], "not an idx file"),
        (lambda raw: raw[:2] + b"\x42" + raw[3:], "not an idx file"),
        (lambda raw: b"", "not an idx file"),
        (lambda raw: b"hello, this is a text file\n", "not an idx file"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path, corrupt, words):
    raw = idx_bytes(torch.zeros(4, 28, 28, dtype=torch.uint8))
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(corrupt(raw))
    with pytest.raises(IdxFormatError, match=words) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_rejects_truncated_gzip(tmp_path):
    compressed = gzip.compress(idx_bytes(torch.randint(0, 255, (50, 28, 28), dtype=torch.uint8)))
    path = tmp_path / "bad-idx3-ubyte.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(IdxFormatError, match="corrupt or truncated gzip"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nothing-here")


# ---------------------------------------------------------------------------- load_dataset


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name, tv_folder, classes", [
    ("fashion-mnist", "FashionMNIST", FASHION_MNIST_CLASSES),
    ("mnist", "MNIST", MNIST_CLASSES),
])
@pytest.mark.parametrize("layout", ["flat", "named", "torchvision", "env"])
def test_load_dataset_layouts(no_default_data, tmp_path, monkeypatch, gz, name, tv_folder, classes, layout):
    base = tmp_path / "data"
    folder = {"flat": base, "named": base / name, "torchvision": base / tv_folder / "raw", "env": base}[layout]
    written = write_dataset(folder, gz)
    root = base
    if layout == "env":
        monkeypatch.setenv("VAE_DATA_DIR", str(base))
        root = None
    for split in ("train", "test"):
        ds = load_dataset(name, split, root=root, device="cpu", download=False)
        images, labels = written[split]
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(images), 1, 28, 28)
        assert torch.equal(ds.images[:, 0], images)
        assert ds.labels.dtype == torch.int64 and torch.equal(ds.labels, labels.long())
        assert ds.classes == classes and ds.name == f"{name}/{split}"
        assert len(ds) == len(images)


def test_load_dataset_picks_the_named_subfolder(no_default_data, tmp_path):
    base = tmp_path / "data"
    fashion = write_dataset(base / "fashion-mnist", gz=True, seed=10)
    mnist = write_dataset(base / "MNIST" / "raw", gz=False, seed=20)
    assert torch.equal(load_dataset("fashion-mnist", root=base, device="cpu", download=False).images[:, 0],
                       fashion["train"][0])
    assert torch.equal(load_dataset("mnist", root=base, device="cpu", download=False).images[:, 0],
                       mnist["train"][0])


def test_search_order_root_before_env_before_system(no_default_data, tmp_path, monkeypatch):
    from_root = write_dataset(tmp_path / "root", gz=False, seed=1)
    from_env = write_dataset(tmp_path / "envdir", gz=False, seed=2)
    from_system = write_dataset(data_module.SYSTEM_DATA_DIR / "fashion-mnist", gz=True, seed=3)
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path / "envdir"))

    def first_train_image(root):
        return load_dataset(root=root, device="cpu", download=False).images[:, 0]

    assert torch.equal(first_train_image(tmp_path / "root"), from_root["train"][0])
    assert torch.equal(first_train_image(None), from_env["train"][0])
    monkeypatch.delenv("VAE_DATA_DIR")
    assert torch.equal(first_train_image(None), from_system["train"][0])


def test_reloading_gives_an_independent_copy(no_default_data, tmp_path):
    write_dataset(tmp_path / "d", gz=True)
    first = load_dataset(root=tmp_path / "d", device="cpu", download=False)
    original = first.images.clone()
    first.images.zero_()
    again = load_dataset(root=tmp_path / "d", device="cpu", download=False)
    assert torch.equal(again.images, original)


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match="'fashion-mnist', 'mnist'"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="'train', 'test'"):
        load_dataset("mnist", split="validation")


def test_mismatched_image_and_label_counts(no_default_data, tmp_path):
    folder = tmp_path / "d"
    write_dataset(folder, gz=False, n_train=5)
    write_idx(folder / "train-labels-idx1-ubyte", torch.zeros(4, dtype=torch.uint8), gz=False)
    with pytest.raises(IdxFormatError, match="same N"):
        load_dataset(root=folder, device="cpu", download=False)


def _assert_helpful_not_found(err: DatasetNotFoundError, searched: Path, name: str) -> None:
    message = str(err)
    assert isinstance(err, FileNotFoundError)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "VAE_DATA_DIR" in message and "root=" in message
    assert "download=True" in message  # the "go online" fix
    assert str(searched) in message  # says where it looked
    assert str(data_module.SYSTEM_DATA_DIR / name) in message
    assert str(data_module.CACHE_DIR / name) in message
    # No torchvision traceback chained to it.
    assert err.__cause__ is None and err.__context__ is None


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_offline_without_data_download_false(no_default_data, tmp_path, name):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, root=empty, download=False)
    _assert_helpful_not_found(info.value, empty, name)
    assert "not attempted" in str(info.value)


@pytest.mark.parametrize("name, tv_class", [("fashion-mnist", "FashionMNIST"), ("mnist", "MNIST")])
def test_offline_without_data_download_fails(no_default_data, tmp_path, monkeypatch, name, tv_class):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets, tv_class, offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, root=empty, download=True)
    _assert_helpful_not_found(info.value, empty, name)
    assert "Name or service not known" in str(info.value)  # why the download failed, in one line
    assert not (data_module.CACHE_DIR / name).exists()  # no empty folders left behind


def test_download_goes_to_the_cache_in_torchvision_layout(no_default_data, tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeFashionMNIST:  # what torchvision does online: files under <root>/FashionMNIST/raw
        def __init__(self, root, train, download):
            calls.append((Path(root), train, download))
            write_dataset(Path(root) / "FashionMNIST" / "raw", gz=False, seed=5)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    ds = load_dataset("fashion-mnist", "test", device="cpu")  # download=None: allowed
    assert calls and all(root == data_module.CACHE_DIR / "fashion-mnist" and dl for root, _, dl in calls)
    assert len(ds) == 10
    # Found in the cache next time, without downloading again.
    calls.clear()
    load_dataset("fashion-mnist", "train", device="cpu")
    assert calls == []


# ---------------------------------------------------------------------------- ImageDataset


def indexed_dataset(n: int) -> ImageDataset:
    """Images whose first two pixels spell their own index (base 256)."""
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    index = torch.arange(n)
    images[:, 0, 0, 0] = (index // 256).to(torch.uint8)
    images[:, 0, 0, 1] = (index % 256).to(torch.uint8)
    return ImageDataset(images, index % 10, MNIST_CLASSES, "indexed")


def indices_of(x: torch.Tensor) -> torch.Tensor:
    digits = (x[:, 0, 0, :2] * 255).round().long()
    return digits[:, 0] * 256 + digits[:, 1]


@pytest.mark.parametrize("batch_size", [1, 7, 128, 1000, 1500])
def test_batches_cover_every_index_exactly_once(batch_size):
    ds = indexed_dataset(1000)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):  # two epochs, each a full permutation
        batches = list(ds.batches(batch_size, generator=generator))
        seen = torch.cat([indices_of(x) for x in batches])
        assert torch.equal(seen.sort().values, torch.arange(1000))
        assert all(x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32 for x in batches)
        assert [len(x) for x in batches[:-1]] == [batch_size] * (len(batches) - 1)


def test_batches_order_drop_last_and_seed():
    ds = indexed_dataset(100)
    in_order = torch.cat([indices_of(x) for x in ds.batches(30, shuffle=False)])
    assert torch.equal(in_order, torch.arange(100))
    dropped = list(ds.batches(30, generator=torch.Generator().manual_seed(0), drop_last=True))
    assert [len(x) for x in dropped] == [30, 30, 30]
    assert len(set(torch.cat([indices_of(x) for x in dropped]).tolist())) == 90

    def order(seed):
        return torch.cat([indices_of(x) for x in ds.batches(30, generator=torch.Generator().manual_seed(seed))])

    assert torch.equal(order(3), order(3))
    assert not torch.equal(order(3), order(4))
    assert not torch.equal(order(3), in_order)


def test_batches_without_binarization_are_the_gray_levels():
    ds = indexed_dataset(10)
    (x,) = ds.batches(10, shuffle=False)
    assert torch.equal(x, ds.float_images())
    assert ds.float_images().max() <= 1 and ds.float_images().dtype == torch.float32


def constant_gray_dataset(n: int, gray: int) -> ImageDataset:
    return ImageDataset(torch.full((n, 1, 28, 28), gray, dtype=torch.uint8), torch.zeros(n, dtype=torch.long),
                        MNIST_CLASSES, "gray")


def test_dynamic_binarization_gives_bernoulli_pixels():
    gray = 64
    ds = constant_gray_dataset(500, gray)
    x = torch.cat(list(ds.batches(128, generator=torch.Generator().manual_seed(0), binarize=True)))
    assert set(x.unique().tolist()) == {0.0, 1.0}
    # 392,000 Bernoulli(64/255) pixels: the mean's standard error is 0.0007.
    assert x.mean().item() == pytest.approx(gray / 255, abs=0.004)
    # Dynamic: the next pass draws new pixels.
    again = torch.cat(list(ds.batches(500, shuffle=False, generator=torch.Generator().manual_seed(1), binarize=True)))
    assert not torch.equal(x, again)


@pytest.mark.parametrize("gray", [0, 255])
def test_dynamic_binarization_keeps_black_black_and_white_white(gray):
    x = torch.cat(list(constant_gray_dataset(200, gray).batches(64, generator=torch.Generator().manual_seed(0),
                                                                   binarize=True)))
    assert x.dtype == torch.float32 and torch.equal(x, torch.full_like(x, gray / 255))


def test_fixed_binarization():
    ds = constant_gray_dataset(300, 200)
    binary = ds.binarized(seed=7)
    assert isinstance(binary, ImageDataset) and binary.images.dtype == torch.uint8
    assert set(binary.images.unique().tolist()) == {0, 255}
    assert binary.float_images().mean().item() == pytest.approx(200 / 255, abs=0.005)
    assert torch.equal(binary.images, ds.binarized(seed=7).images)
    assert not torch.equal(binary.images, ds.binarized(seed=8).images)
    assert torch.equal(binary.labels, ds.labels)
    # Black and white pixels stay as they are.
    ds.images[:, :, :2] = 0
    ds.images[:, :, 2:4] = 255
    b = ds.binarized(0).images
    assert (b[:, :, :2] == 0).all() and (b[:, :, 2:4] == 255).all()


def test_subset_to_and_validation():
    ds = indexed_dataset(50)
    assert len(ds.subset(20)) == 20 and torch.equal(indices_of(ds.subset(20).float_images()), torch.arange(20))
    picked = ds.subset(torch.tensor([3, 1, 4]))
    assert torch.equal(indices_of(picked.float_images()), torch.tensor([3, 1, 4]))
    assert torch.equal(picked.labels, torch.tensor([3, 1, 4]))
    assert ds.to("cpu") is ds
    with pytest.raises(ValueError, match="n must be in"):
        ds.subset(51)
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.rand(3, 1, 28, 28), torch.zeros(3, dtype=torch.long), [], "float")
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), [], "x")


def test_real_fashion_mnist_if_installed():
    folder = Path("/usr/share/datasets/fashion-mnist")
    if not (folder / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist is not installed")
    test = load_dataset("fashion-mnist", "test", root=folder, device="cpu", download=False)
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    assert test.classes[9] == "Ankle boot"


# ---------------------------------------------------------------------------- permissions and argument types


def test_a_data_folder_without_read_permission_names_the_folder(no_default_data, tmp_path, monkeypatch):
    folder = tmp_path / "locked"
    write_dataset(folder, gz=False)
    if os.geteuid() != 0:  # a real unreadable folder (root reads it anyway)
        folder.chmod(0o000)
        try:
            with pytest.raises(PermissionError, match=f"Cannot look inside the folder {folder}: permission denied"):
                load_dataset("mnist", root=folder, download=False)
        finally:
            folder.chmod(0o755)
    # As this process sees a folder it may not search: nothing can be found in it, and access says no.
    empty = tmp_path / "empty_locked"
    empty.mkdir()
    real = os.access  # as a user without the permission sees it (root may read everything)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != empty and real(path, mode, **kw))
    with pytest.raises(PermissionError) as info:
        load_dataset("mnist", root=empty, download=False)
    assert f"Cannot look inside the folder {empty}: permission denied" in str(info.value)
    assert "chmod a+rx" in str(info.value) and "root=that_folder" in str(info.value)


def test_an_unreadable_idx_file_names_the_file(no_default_data, tmp_path, monkeypatch):
    write_dataset(tmp_path / "data", gz=False)
    images = (tmp_path / "data" / "train-images-idx3-ubyte").resolve()
    real = os.access  # as a user without the permission sees it (root may read everything)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != images and real(path, mode, **kw))
    for call in (lambda: read_idx(images), lambda: load_dataset("mnist", root=tmp_path / "data", download=False)):
        with pytest.raises(PermissionError, match=f"Cannot read {images}: permission denied.*chmod a\\+r"):
            call()


def test_batches_checks_its_arguments_when_called_not_when_iterated():
    ds = indexed_dataset(10)
    for bad in (0, 2.5, True, -1, "8"):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            ds.batches(bad)  # no iteration needed: the error comes at the call
    assert [len(x) for x in ds.batches(np.int64(4), shuffle=False)] == [4, 4, 2]  # numpy ints are ints
