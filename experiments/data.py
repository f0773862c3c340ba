"""Image datasets for denoising: image folders, the standard benchmark sets by name, and ``builtin``.

Every dataset yields ``Tensor[C, H, W]`` float32 in ``[0, 1]`` decoded from 8-bit files, so
``round(x · 255)`` gives back the stored pixels exactly. Colour conversion is explicit: ask for
``channels=1`` or ``channels=3`` and this module converts; ``channels=None`` keeps each file as stored.

- Grey from colour is ITU-R BT.601 luma, ``round(0.299 R + 0.587 G + 0.114 B)`` on the 8-bit
  values. That is how ``BSD68`` relates to ``CBSD68`` (to within ±1 grey level, see the data README)
  and what OpenCV's ``BGR2GRAY`` (used to train the published grey model, spec §8b) computes.
- Colour from grey repeats the grey channel three times.

Standard sets live under a data root, given as ``data_root=`` / ``--data-root`` or by the
``DYNFILTER_DATA`` environment variable, laid out as ``<root>/<name>/<images>``. ``builtin`` needs no
root and no download: natural photographs shipped inside scikit-image, split into fixed train and
test parts (:data:`BUILTIN_SPLITS`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "STANDARD_SETS",
    "BUILTIN_SPLITS",
    "ConversionWarning",
    "ImageSet",
    "ImageFolder",
    "BuiltinImages",
    "PairedImageFolder",
    "read_image",
    "rgb_to_grey",
    "convert_channels",
    "to_tensor",
    "resolve_data_root",
    "open_dataset",
    "available_sets",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Name -> channels as stored (the layout of ../shared/data; see its README).
STANDARD_SETS: dict[str, int] = {
    "CBSD68": 3,
    "Kodak24": 3,
    "Kodak24_center500": 3,
    "McMaster": 3,
    "Set12": 1,
    "BSD68": 1,
    "CBSD432": 3,
    "Train400": 1,
}

# The colour photographs bundled with scikit-image (no download). Four natural photographs are for
# testing; the two views of the motorcycle stereo pair (near repeats of each other, so both train) and three
# scientific images are for training. ``cat`` is the same picture as ``chelsea`` and is left out.
BUILTIN_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("hubble_deep_field", "immunohistochemistry", "retina", "motorcycle_left", "motorcycle_right"),
    "test": ("astronaut", "chelsea", "coffee", "rocket"),
}
_BUILTIN_ALIASES = {"builtin": "test", "builtin-test": "test", "builtin-train": "train"}

_ENV_DATA_ROOT = "DYNFILTER_DATA"
_BT601 = (0.299, 0.587, 0.114)


def rgb_to_grey(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an 8-bit colour image, rounded back to 8 bits.

    Args:
        img (ndarray[H, W, 3], uint8): RGB.

    Returns:
        ndarray[H, W, 1], uint8: ``round(0.299 R + 0.587 G + 0.114 B)``.
    """
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array of shape (H, W, 3), got {img.dtype} {img.shape}")
    luma = img.astype(np.float64) @ np.array(_BT601)
    return np.rint(luma).astype(np.uint8)[:, :, None]


def _check_channels(channels: object) -> None:
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")


def convert_channels(img: np.ndarray, channels: int | None) -> np.ndarray:
    """Convert an 8-bit ``(H, W, 1|3)`` image to ``channels`` (1: BT.601 luma, 3: grey repeated, None: as is)."""
    _check_channels(channels)
    have = img.shape[2]
    if channels is None or channels == have:
        return img
    if channels == 1:
        return rgb_to_grey(img)
    return np.repeat(img, 3, axis=2)


class ConversionWarning(UserWarning):
    """An image was converted on reading (alpha dropped, grey ↔ colour); the message names it."""


def _png_bit_depth(path: Path) -> int | None:
    """The bit depth in a PNG's header (Pillow reads 16-bit colour PNGs as 8-bit without a word)."""
    with path.open("rb") as f:
        head = f.read(25)
    return head[24] if len(head) == 25 and head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" else None


def read_image(path: str | os.PathLike, channels: int | None = None) -> np.ndarray:
    """Decode an 8-bit image file into ``ndarray[H, W, C]`` uint8, ``C`` in {1, 3}.

    Palette, 1-bit and CMYK images become RGB or grey through Pillow. An alpha channel is dropped, and a
    :class:`ConversionWarning` says so. Images with more than 8 bits per sample (16-bit grey or colour)
    are refused rather than silently rescaled: PSNR is measured on the 8-bit scale.

    Args:
        path: the file.
        channels (int, optional): 1 or 3 to convert (see :func:`convert_channels`); ``None`` keeps
            the stored colour type.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded, or is not 8-bit; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if _png_bit_depth(path) == 16:
        raise ValueError(f"{path} is a 16-bit PNG; dynfilter reads 8-bit images (its PSNR is on the 8-bit scale): "
                         f"save it with 8 bits per sample")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("LA", "PA", "RGBA") or (mode == "P" and "transparency" in im.info):
                warnings.warn(f"{path}: the alpha channel is dropped ({mode} read as {'grey' if mode == 'LA' else 'RGB'})",
                              ConversionWarning, stacklevel=2)
            if mode in ("L", "RGB"):
                pass
            elif mode in ("1", "LA"):
                im = im.convert("L")
            elif mode in ("P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr"):
                im = im.convert("RGB")
            else:
                raise ValueError(f"unsupported image mode {mode!r} (only 8-bit grey or colour) in {path}")
            arr = np.array(im, dtype=np.uint8)  # a writable copy
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot decode image {path}: {exc}") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return convert_channels(arr, channels)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """``ndarray[H, W, C]`` uint8 to ``Tensor[C, H, W]`` float32 in ``[0, 1]`` (value / 255)."""
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"expected a uint8 array of shape (H, W, C), got {img.dtype} {img.shape}")
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


class ImageSet(torch.utils.data.Dataset):
    """A named, ordered list of 8-bit images; ``dataset[i]`` is ``Tensor[C, H, W]`` in ``[0, 1]``.

    Subclasses provide :attr:`names` and :meth:`read`. Training code can crop patches from
    ``dataset[i]``; evaluation code uses :attr:`names` to label rows.
    """

    name: str
    channels: int | None
    names: list[str]
    #: Image index → the channel conversion made when it was read (filled as images are read).
    conversions: dict[int, str]

    def __len__(self) -> int:
        return len(self.names)

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` as stored after channel conversion, ``ndarray[H, W, C]`` uint8."""
        raise NotImplementedError

    def converted(self, index: int, img: np.ndarray) -> np.ndarray:
        """``img`` (image ``index`` as stored) converted to :attr:`channels`; the conversion is recorded in
        :attr:`conversions` and announced once per set by a :class:`ConversionWarning`."""
        have = img.shape[2]
        if self.channels is None or self.channels == have:
            return img
        how = "colour to grey (BT.601 luma)" if self.channels == 1 else "grey to colour (grey repeated)"
        conversions = self.__dict__.setdefault("conversions", {})
        if not conversions:
            warnings.warn(f"{self.name}: images converted from {how} for a {self.channels}-channel model",
                          ConversionWarning, stacklevel=3)
        conversions[index] = how
        return convert_channels(img, self.channels)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name} has {len(self)} images, index {index} is out of range")
        return to_tensor(self.read(index % len(self)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, images={len(self)}, channels={self.channels})"


def _list_images(root: Path) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    paths = sorted(
        (p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
         and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.name,  # plain string order, which is how BSD68's testNNN pair with CBSD68
    )
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {root}")
    return paths


class ImageFolder(ImageSet):
    """The images directly inside a folder, in plain file-name order.

    Args:
        root: the folder; files with an extension in :data:`IMAGE_EXTENSIONS` are used, others ignored.
        channels (int, optional): 1 or 3 to convert every image; ``None`` keeps each as stored.
        name (str, optional): the set name recorded in results; defaults to the folder name.

    >>> import tempfile; from PIL import Image
    >>> d = tempfile.mkdtemp(); Image.new("RGB", (5, 4)).save(f"{d}/a.png")
    >>> ImageFolder(d, channels=1)[0].shape
    torch.Size([1, 4, 5])
    """

    def __init__(self, root: str | os.PathLike, channels: int | None = None, name: str | None = None) -> None:
        _check_channels(channels)
        self.root = Path(root)
        self.paths = _list_images(self.root)
        self.names = [p.name for p in self.paths]
        self.channels = channels
        self.name = name or self.root.name

    def read(self, index: int) -> np.ndarray:
        return self.converted(index, read_image(self.paths[index]))


def _skimage_loader(name: str) -> Callable[[], np.ndarray]:
    from skimage import data as skdata

    if name.startswith("motorcycle_"):
        view = 0 if name == "motorcycle_left" else 1
        return lambda: skdata.stereo_motorcycle()[view]
    return getattr(skdata, name)


class BuiltinImages(ImageSet):
    """scikit-image's bundled photographs, split into fixed ``"train"`` and ``"test"`` parts.

    Nothing is downloaded: every image is a file inside the installed ``skimage`` package.
    Decoded images are kept in memory (14 MB for both splits).

    Args:
        split (str): ``"train"`` or ``"test"`` (see :data:`BUILTIN_SPLITS`).
        channels (int, optional): 1 converts to BT.601 luma; 3 or ``None`` keeps colour.

    >>> BuiltinImages("test").names
    ['astronaut', 'chelsea', 'coffee', 'rocket']
    """

    def __init__(self, split: str = "test", channels: int | None = None) -> None:
        if split not in BUILTIN_SPLITS:
            raise ValueError(f"unknown builtin split {split!r}; expected one of {sorted(BUILTIN_SPLITS)}")
        _check_channels(channels)
        self.split = split
        self.names = list(BUILTIN_SPLITS[split])
        self.channels = channels
        self.name = "builtin" if split == "test" else f"builtin-{split}"
        self._cache: dict[int, np.ndarray] = {}

    def read(self, index: int) -> np.ndarray:
        if index not in self._cache:
            image_name = self.names[index]
            try:
                img = np.asarray(_skimage_loader(image_name)(), dtype=np.uint8)
            except Exception as exc:  # skimage raises various errors for a missing data file
                raise ValueError(f"cannot load scikit-image's bundled image {image_name!r}: {exc}") from exc
            self._cache[index] = img
        return self.converted(index, self._cache[index])


class PairedImageFolder(torch.utils.data.Dataset):
    """Real-noise pairs: ``noisy_root/<file>`` with ``clean_root/<file>``, matched by file stem.

    ``dataset[i]`` is ``(noisy, clean)``, each ``Tensor[C, H, W]`` in ``[0, 1]``.

    Args:
        noisy_root: folder of noisy images.
        clean_root: folder of clean images with the same stems.
        channels (int, optional): as :class:`ImageFolder`.
        name (str, optional): the set name; defaults to the parent folder's name.

    Raises:
        ValueError: a stem appears in one folder only (the message lists some).
    """

    paired = True

    def __init__(
        self,
        noisy_root: str | os.PathLike,
        clean_root: str | os.PathLike,
        channels: int | None = None,
        name: str | None = None,
    ) -> None:
        self.noisy = ImageFolder(noisy_root, channels)
        self.clean = ImageFolder(clean_root, channels)
        noisy = {p.stem: i for i, p in enumerate(self.noisy.paths)}
        clean = {p.stem: i for i, p in enumerate(self.clean.paths)}
        unmatched = sorted(set(noisy) ^ set(clean))
        if unmatched:
            raise ValueError(
                f"{len(unmatched)} images have no partner between {self.noisy.root} and {self.clean.root}, "
                f"e.g. {unmatched[:5]}"
            )
        stems = sorted(noisy)
        self._pairs = [(noisy[s], clean[s]) for s in stems]
        self.names = [self.clean.names[clean[s]] for s in stems]
        self.channels = channels
        self.name = name or Path(noisy_root).resolve().parent.name

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, c = self._pairs[index]
        return self.noisy[n], self.clean[c]


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The folder holding the standard sets: ``data_root`` if given, else ``$DYNFILTER_DATA``.

    Raises:
        ValueError: neither is set.
        FileNotFoundError: the folder does not exist.
    """
    root = data_root if data_root is not None else os.environ.get(_ENV_DATA_ROOT)
    if not root:
        raise ValueError(
            f"no data root: pass --data-root DIR or set {_ENV_DATA_ROOT} to the folder holding "
            f"{', '.join(STANDARD_SETS)} (or use the set 'builtin', which needs no data)"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found: {root}")
    return root


def available_sets() -> list[str]:
    """Names accepted by :func:`open_dataset` (besides a folder path)."""
    return sorted(_BUILTIN_ALIASES) + list(STANDARD_SETS)


def open_dataset(
    name: str,
    data_root: str | os.PathLike | None = None,
    channels: int | None = None,
) -> ImageSet:
    """Open a dataset by name: ``builtin`` (= ``builtin-test``), ``builtin-train``, a standard set or a folder.

    Args:
        name: a name from :func:`available_sets` (standard names match case-insensitively) or a path
            to an image folder.
        data_root: where the standard sets live (see :func:`resolve_data_root`); unused for builtin.
        channels: 1 or 3 to convert; ``None`` gives the standard set's own channels (mixed folders
            keep each image as stored).

    >>> open_dataset("builtin", channels=1)[0].shape
    torch.Size([1, 512, 512])
    """
    if name in _BUILTIN_ALIASES:
        return BuiltinImages(_BUILTIN_ALIASES[name], channels)
    canonical = {k.lower(): k for k in STANDARD_SETS}.get(name.lower())
    if canonical is not None:
        folder = resolve_data_root(data_root) / canonical
        if not folder.is_dir():
            raise FileNotFoundError(f"standard set {canonical} not found: no folder {folder}")
        return ImageFolder(folder, STANDARD_SETS[canonical] if channels is None else channels, canonical)
    if Path(name).expanduser().is_dir():
        return ImageFolder(Path(name).expanduser(), channels)
    raise ValueError(f"unknown dataset {name!r}; expected a folder or one of {available_sets()}")
