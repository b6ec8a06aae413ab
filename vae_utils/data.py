"""Image data sets held as one tensor on the device, and where their idx files are found (``vae_utils.idx``
reads them).

The whole set lives in memory as ``uint8 [N, 1, 28, 28]`` on the training device (47 MB for
Fashion-MNIST's 60,000 training images), so a batch is one ``index_select`` with a slice of a
``randperm`` -- no ``DataLoader``, no per-sample Python loop, and on a GPU the data never leaves it.

Where the files are looked for, in order (the first folder that has the two files of a split wins):

1. the ``root`` argument,
2. ``$VAE_DATA_DIR``,
3. ``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist`` installs Fashion-MNIST there),
4. ``~/.cache/vae_utils/<name>`` (where downloads go),

and in each of them also the sub-folders ``<name>/`` and torchvision's ``FashionMNIST/raw/`` or
``MNIST/raw/``. If nothing is found and downloading is allowed, torchvision downloads the set into the
cache folder; offline, :class:`DatasetNotFoundError` says where it looked and how to get the data.
"""

from __future__ import annotations

import numbers
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .idx import IdxFormatError, read_idx, read_idx_cached, readable, unreadable

__all__ = ["FASHION_MNIST_CLASSES", "MNIST_CLASSES", "DATASET_NAMES", "DatasetNotFoundError", "IdxFormatError",
           "ImageDataset", "load_dataset", "read_idx"]

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
MNIST_CLASSES = [str(digit) for digit in range(10)]

# name -> (class names, torchvision class name, which is also torchvision's folder name)
_DATASETS = {"fashion-mnist": (FASHION_MNIST_CLASSES, "FashionMNIST"), "mnist": (MNIST_CLASSES, "MNIST")}
DATASET_NAMES = tuple(_DATASETS)
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}

# Module attributes (not constants baked into functions) so tests can point them at empty folders.
SYSTEM_DATA_DIR = Path("/usr/share/datasets")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vae_utils"
APT_PACKAGE = "dataset-fashion-mnist"


class DatasetNotFoundError(FileNotFoundError):
    """The data set's idx files were not found anywhere and could not be downloaded."""


# ------------------------------------------------------------------------------ the data set
@dataclass
class ImageDataset:
    """A whole image data set as tensors on one device.

    Attributes:
        images: ``uint8 [N, 1, 28, 28]``, gray levels 0..255 (a binarized set holds only 0 and 255).
        labels: ``int64 [N]``, class indices into ``classes``.
        classes: class names.
        name: e.g. ``"fashion-mnist/train"``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str

    def __post_init__(self) -> None:
        # uint8 pixels are in 0..255 by construction, so every batch (pixels / 255) is in [0, 1]:
        # the one value check a data set needs is this dtype check, done once here.
        for field_name in ("images", "labels"):
            if not isinstance(getattr(self, field_name), torch.Tensor):
                raise TypeError(f"ImageDataset.{field_name} must be a torch.Tensor, got "
                                f"{type(getattr(self, field_name)).__name__}; convert it with torch.as_tensor(x)")
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            fix = "Convert float images in [0, 1] with (x * 255).round().to(torch.uint8)"
            if self.images.is_floating_point() and self.images.numel() and float(self.images.max()) > 1.0:
                fix = (f"These floats go up to {float(self.images.max()):g}, so they look like 0..255 pixels: "
                       "convert them with x.round().to(torch.uint8)")
            raise ValueError(f"ImageDataset.images must be uint8 [N, C, H, W] (gray levels 0..255); got "
                             f"{self.images.dtype} {list(self.images.shape)}. {fix}, and add a channel dim with "
                             "x.unsqueeze(1).")
        if self.labels.is_floating_point() or self.labels.dtype == torch.bool:
            raise TypeError(f"ImageDataset.labels must hold integer class indices, got dtype {self.labels.dtype}; "
                            "use labels.long()")
        if not isinstance(self.name, str):
            raise TypeError(f"ImageDataset.name must be a str, got {type(self.name).__name__}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"ImageDataset.labels must have shape [N] = [{self.images.shape[0]}]; "
                             f"got {list(self.labels.shape)}.")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, images=uint8 {list(self.images.shape)}, "
            f"classes={len(self.classes)}, device={self.device})"
        )

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``"""
        return tuple(self.images.shape[1:])

    def to(self, device: str | torch.device) -> ImageDataset:
        """This data set with its tensors on ``device`` (``self`` if already there).

        device: "cpu", "cuda", "cuda:1", "mps", a torch.device, or None for the best available one;
        checked by ``pick_device`` (a clear error for an unknown or unavailable device)."""
        from .device import pick_device

        device = pick_device(device)
        if self.images.device == device or (
            device.index is None and self.images.device.type == device.type
        ):
            return self
        return ImageDataset(self.images.to(device), self.labels.to(device), self.classes, self.name)

    def float_images(self) -> torch.Tensor:
        """All images as ``float32 [N, 1, 28, 28]`` in [0, 1] (a new tensor)."""
        return self.images.float().div_(255)

    def subset(self, n_or_index: int | slice | torch.Tensor | list[int]) -> ImageDataset:
        """The first ``n`` examples (an int), or the examples picked by a slice, an index list or
        tensor, or a boolean mask ``[N]``."""
        if isinstance(n_or_index, (bool, float)):
            raise TypeError(
                f"subset({n_or_index!r}): pass an int count (e.g. subset({int(n_or_index)})), a slice, "
                "or a list/tensor of indices"
            )
        if isinstance(n_or_index, numbers.Integral):
            n = int(n_or_index)
            if not 0 <= n <= len(self):
                raise ValueError(f"subset({n}): n must be in 0..{len(self)}.")
            index: slice | torch.Tensor = slice(0, n)
        elif isinstance(n_or_index, slice):
            index = n_or_index
        else:
            index = self._index_tensor(n_or_index)
        return ImageDataset(self.images[index], self.labels[index], self.classes, self.name)

    def _index_tensor(self, indices) -> torch.Tensor:
        """Indices (ints, or a bool mask [N]) as a tensor on the data's device, or a clear error."""
        try:
            index = torch.as_tensor(indices, device=self.device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"subset takes an int, a slice, or a list/tensor of indices, got {type(indices).__name__} ({err})"
            ) from None
        if index.dtype == torch.bool:
            if index.shape != (len(self),):
                raise ValueError(f"a boolean mask for subset must have shape [{len(self)}], got {list(index.shape)}")
            return index
        if index.is_floating_point() or index.is_complex() or index.dim() > 1:
            raise TypeError(
                f"subset takes integer indices (a list or a 1-d tensor), got {index.dtype} {list(index.shape)}; "
                "use .long() for whole-number floats"
            )
        index = index.long().reshape(-1)
        if index.numel() and not (-len(self) <= int(index.min()) and int(index.max()) < len(self)):
            raise IndexError(
                f"subset: indices must be in -{len(self)}..{len(self) - 1}, got values from "
                f"{int(index.min())} to {int(index.max())}"
            )
        return index

    def batches(self, batch_size: int, shuffle: bool = True, generator: torch.Generator | None = None,
                binarize: bool = False, drop_last: bool = False,
                labels: bool = False) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``x: float32 [B, 1, 28, 28]`` in [0, 1], one pass over the data set; with ``labels=True``
        the pairs ``(x, y)`` with ``y: int64 [B]`` (a conditional model's batches).

        The order comes from one ``randperm`` on the data's device, so each example appears exactly
        once per pass; batches are ``index_select`` on the uint8 tensor, converted to float on the fly
        (values in [0, 1] by construction: nothing downstream needs to check them). With
        ``binarize=True`` every pixel is redrawn as ``Bernoulli(x)`` each time it is served (dynamic
        binarization: 1 where a uniform draw is below x). ``generator`` drives both the order and the
        binarization; one on a different device than the data is used to seed one on the data's device.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        for flag, value in (("shuffle", shuffle), ("binarize", binarize), ("drop_last", drop_last), ("labels", labels)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be True or False, got {value!r}.")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, got {type(generator).__name__}; "
                "for a seed write torch.Generator().manual_seed(seed)"
            )
        # The arguments are checked here, at the call; the batches come from a generator.
        generator = _generator_on(self.device, generator)
        return self._batches(int(batch_size), shuffle, generator, binarize, drop_last, labels)

    def _batches(self, batch_size, shuffle, generator, binarize, drop_last, labels) -> Iterator:
        n = len(self)
        order = torch.randperm(n, device=self.device, generator=generator) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            index = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
            pixels = self.images[index] if order is None else self.images.index_select(0, index)
            x = _binarize(pixels, generator) if binarize else pixels.float().div_(255)
            yield (x, self.labels[index]) if labels else x

    def binarized(self, seed: int = 0) -> ImageDataset:
        """A fixed stochastic binarization: each pixel is 255 with probability ``gray/255``, else 0.

        The same seed gives the same images on every device (the draw is made on the CPU and moved),
        so a test set binarized this way is one fixed evaluation set (as in the IWAE paper's
        dynamically binarized MNIST), wherever a model is trained or evaluated.
        """
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"binarized(seed): seed must be an int, got {seed!r}")
        generator = torch.Generator().manual_seed(int(seed))
        gray = self.images.cpu().float().div_(255)
        binary = torch.bernoulli(gray, generator=generator).to(torch.uint8).mul_(255).to(self.device)
        return ImageDataset(binary, self.labels, self.classes, f"{self.name} (binarized, seed {seed})")


def _binarize(pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Each pixel 1 with probability gray/255, else 0: float32 of pixels' shape (uint8 0..255 in).

    1 where 255 u < gray for u ~ Uniform[0, 1), which is Bernoulli(gray / 255). Drawn this way rather than
    with ``torch.bernoulli``, which on a CPU takes 3x as long (1.4 ms against 0.47 ms for a batch of 128) and,
    from the same CPU generator, gives the same pixels (checked on 1.6M pixels; the shipped weights retrained
    bit for bit).
    """
    uniform = torch.rand(pixels.shape, generator=generator, device=pixels.device)
    return uniform.mul_(255).lt_(pixels)


def _generator_on(device: torch.device, generator: torch.Generator | None) -> torch.Generator | None:
    """``generator`` if it lives on ``device``; otherwise a generator on ``device`` seeded from it."""
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)


# ------------------------------------------------------------------------------ finding and loading the files

def load_dataset(name: str = "fashion-mnist", split: str = "train", root: str | os.PathLike | None = None,
                 device: str | torch.device | None = None, download: bool | None = None) -> ImageDataset:
    """Load Fashion-MNIST or MNIST as an :class:`ImageDataset` on ``device``.

    Args:
        name: ``"fashion-mnist"`` (default) or ``"mnist"``.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        root: a folder to look in first (holding the idx files, or ``<name>/`` or torchvision's
            ``FashionMNIST/raw/`` / ``MNIST/raw/`` with them).
        device: where the tensors go; ``None`` picks cuda, then mps, then cpu (``pick_device``).
        download: allow torchvision to download the set into ``~/.cache/vae_utils/<name>`` when it is
            not found locally. ``None`` (default) means allowed; pass ``False`` to never go online.

    Returns ``ImageDataset`` with ``images: uint8 [N, 1, 28, 28]`` and ``labels: int64 [N]``.

    Raises ``ValueError`` for an unknown name or split, :class:`DatasetNotFoundError` when the files
    are nowhere to be found (the message lists the places searched and three ways to fix it), and
    :class:`IdxFormatError` for a corrupt file.
    """
    from .device import pick_device

    valid = ", ".join(repr(n) for n in DATASET_NAMES)
    if not isinstance(name, str):
        raise TypeError(f"load_dataset: name must be a str, one of {valid}; got {name!r}.")
    if not isinstance(split, str):
        raise TypeError(f"load_dataset: split must be 'train' or 'test', got {split!r}.")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"load_dataset: root must be a folder path (str or pathlib.Path) or None, got {root!r}.")
    if download is not None and not isinstance(download, bool):
        raise TypeError(f"load_dataset: download must be True, False or None, got {download!r}.")
    key = name.lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist"}.get(key, key)
    if key not in _DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Valid names: {valid}.")
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"Unknown split {split!r}. Valid splits: 'train', 'test'.")
    classes, _ = _DATASETS[key]

    searched: list[Path] = []
    files = _find_split(key, split, root, searched)
    if files is None:
        _raise_if_unreadable(searched)
    download_error = None
    if files is None and download is not False:
        download_error = _download(key)
        if download_error is None:
            files = _find_split(key, split, None, [])
    if files is None:
        raise DatasetNotFoundError(_not_found_message(key, split, searched, download, download_error))

    images_path, labels_path = files
    images = read_idx_cached(images_path)
    labels = read_idx_cached(labels_path)
    if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise IdxFormatError(
            f"{images_path} ({list(images.shape)}) and {labels_path} ({list(labels.shape)}) do not "
            "form an image set: expected images [N, H, W] and labels [N] with the same N."
        )
    device = pick_device(device)
    # copy=True: the cached tensors stay private even on the CPU, so changing the data set in place
    # cannot change what the next load_dataset returns.
    return ImageDataset(
        images=images.unsqueeze(1).to(device, copy=True),
        labels=labels.to(device=device, dtype=torch.int64, copy=True),
        classes=list(classes),
        name=f"{key}/{split}",
    )


def _candidate_dirs(name: str, root: str | os.PathLike | None) -> list[Path]:
    """Folders to search, in order. Dataset-specific sub-folders come before the folder itself, so a
    folder holding both ``mnist/`` and ``fashion-mnist/`` gives the right one."""
    _, tv_name = _DATASETS[name]
    bases: list[Path] = []
    if root is not None:
        bases.append(Path(root).expanduser())
    env = os.environ.get("VAE_DATA_DIR")
    if env:
        bases.append(Path(env).expanduser())
    dirs: list[Path] = []
    for base in bases:
        dirs += [base / name, base / tv_name / "raw", base]
    system = Path(SYSTEM_DATA_DIR) / name
    cache = Path(CACHE_DIR) / name
    dirs += [system, system / tv_name / "raw", cache, cache / tv_name / "raw"]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _find_split(name: str, split: str, root: str | os.PathLike | None,
                searched: list[Path]) -> tuple[Path, Path] | None:
    prefix = _SPLIT_PREFIX[split]
    for folder in _candidate_dirs(name, root):
        searched.append(folder)
        images = _find_file(folder, f"{prefix}-images-idx3-ubyte")
        labels = _find_file(folder, f"{prefix}-labels-idx1-ubyte")
        if images is not None and labels is not None:
            return images, labels
    return None


def _find_file(folder: Path, stem: str) -> Path | None:
    # The plain file first: it is what torchvision leaves next to the .gz, and it reads faster.
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        try:
            if stat.S_ISREG(candidate.stat().st_mode):
                return candidate
        except (FileNotFoundError, NotADirectoryError):
            pass
        except PermissionError:  # the folder cannot be searched: load_dataset says so if nothing is found
            return None
    return None


def _raise_if_unreadable(searched: list[Path]) -> None:
    """Nothing was found: if a folder on the search path exists but cannot be searched or read,
    that is the likely reason, so say so (with the path) instead of "not found"."""
    for folder in searched:
        try:
            exists = folder.is_dir()
        except PermissionError:  # its parent cannot be searched
            raise unreadable(folder.parent, folder=True) from None
        if exists and not readable(folder, folder=True):
            raise unreadable(folder, folder=True)


def _download(name: str) -> str | None:
    """Download ``name`` with torchvision into the cache folder; ``None`` on success, else why not."""
    _, tv_name = _DATASETS[name]
    target = Path(CACHE_DIR) / name
    try:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, tv_name)
        target.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            dataset_class(root=str(target), train=train, download=True)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 -- never let a torchvision traceback escape
        _remove_empty_dirs(target)
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(err).__name__
        return f"{type(err).__name__}: {reason}"
    return None


def _remove_empty_dirs(folder: Path) -> None:
    """Undo the empty ``<name>/FashionMNIST/raw`` tree a failed download leaves behind."""
    if not folder.is_dir():
        return
    for sub in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


def _not_found_message(name: str, split: str, searched: list[Path], download: bool | None,
                       download_error: str | None) -> str:
    prefix = _SPLIT_PREFIX[split]
    files = f"{prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz]"
    looked = "\n".join(f"  - {folder}" for folder in searched)
    if download is False:
        tried = "Downloading was not attempted (download=False)."
    else:
        tried = f"Downloading with torchvision failed ({download_error})."
    if name == "fashion-mnist":
        apt = f"  1. Install it offline: sudo apt-get install {APT_PACKAGE}  (puts it in {SYSTEM_DATA_DIR / name})"
    else:
        apt = (
            f"  1. Use Fashion-MNIST instead, which installs offline: sudo apt-get install {APT_PACKAGE}, "
            "then load_dataset('fashion-mnist')"
        )
    return (
        f"Could not find the {name} {split} files ({files}). Looked in:\n{looked}\n{tried}\n"
        "To fix this, do one of:\n"
        f"{apt}\n"
        "  2. Put the four idx files (train-/t10k-images-idx3-ubyte, train-/t10k-labels-idx1-ubyte, "
        ".gz or not) in a folder and pass load_dataset(..., root='that/folder') or set VAE_DATA_DIR "
        "to it.\n"
        "  3. Go online and call load_dataset(..., download=True); torchvision downloads it into "
        f"{Path(CACHE_DIR) / name}."
    )
