"""Datasets: decoding and colour conversion, standard sets by name, builtin images, errors naming the file."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.data import (
    BUILTIN_SPLITS,
    STANDARD_SETS,
    BuiltinImages,
    ImageFolder,
    PairedImageFolder,
    open_dataset,
    read_image,
    rgb_to_grey,
)

# Image counts and channels from the data README's table (independent of the code's table).
README_COUNTS = {"Kodak24": 24, "Kodak24_center500": 24, "CBSD68": 68, "McMaster": 18, "Set12": 12,
                 "BSD68": 68, "CBSD432": 432, "Train400": 400}


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg"])
def test_formats_decode_to_unit_float(tmp_path, ext):
    arr = _rgb(7, 5)
    Image.fromarray(arr).save(tmp_path / f"a{ext}")
    ds = ImageFolder(tmp_path)
    x = ds[0]
    assert x.shape == (3, 7, 5) and x.dtype == torch.float32
    expected = np.array(Image.open(tmp_path / f"a{ext}").convert("RGB"))  # Pillow's own decode
    torch.testing.assert_close(x, torch.from_numpy(expected).permute(2, 0, 1).float() / 255, rtol=0, atol=0)
    if ext not in (".jpg", ".jpeg"):  # lossless formats give back the pixels exactly
        assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(arr).permute(2, 0, 1))


def test_grey_and_colour_conversion_is_explicit(tmp_path):
    arr = _rgb(6, 4)
    Image.fromarray(arr).save(tmp_path / "c.png")
    Image.fromarray(arr[:, :, 0]).save(tmp_path / "g.png")
    assert ImageFolder(tmp_path)[0].shape[0] == 3 and ImageFolder(tmp_path)[1].shape[0] == 1  # as stored
    grey = ImageFolder(tmp_path, channels=1)[0][0]
    luma = np.rint(0.299 * arr[..., 0] + 0.587 * arr[..., 1] + 0.114 * arr[..., 2]) / 255
    torch.testing.assert_close(grey, torch.from_numpy(luma).float(), rtol=0, atol=1e-7)
    colour = ImageFolder(tmp_path, channels=3)[1]
    assert torch.equal(colour[0], colour[1]) and torch.equal(colour[0], colour[2])
    torch.testing.assert_close(colour[0], torch.from_numpy(arr[:, :, 0]).float() / 255, rtol=0, atol=0)
    with pytest.raises(ValueError, match="channels must be 1, 3 or None"):
        ImageFolder(tmp_path, channels=2)


def test_grey_conversion_matches_bsd68(shared_data):
    # BSD68's testNNN is the NNN-th CBSD68 image in plain name order, within ±1 grey level (data README).
    colour = open_dataset("CBSD68", shared_data, channels=1)
    grey = open_dataset("BSD68", shared_data)
    for i in (0, 11, 67):
        a, b = colour.read(i).astype(int), grey.read(i).astype(int)
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1
        assert (a != b).mean() < 1e-3
    assert grey.names[11] == "test012.png" and colour.names[11] == "12084.png"


def test_standard_sets_by_name(shared_data, monkeypatch):
    for name, count in README_COUNTS.items():
        ds = open_dataset(name, shared_data)
        assert (len(ds), ds.name, ds.channels) == (count, name, STANDARD_SETS[name])
    monkeypatch.setenv("DYNFILTER_DATA", str(shared_data))
    kodak = open_dataset("kodak24")  # case-insensitive, root from the environment
    assert kodak.names[0] == "kodim01.png" and kodak[0].shape == (3, 512, 768)
    assert open_dataset("Set12")[0].shape == (1, 256, 256)
    mcm = open_dataset("McMaster", channels=1)
    assert mcm[0].shape == (1, 500, 500)


def test_data_root_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("DYNFILTER_DATA", raising=False)
    with pytest.raises(ValueError, match="--data-root"):
        open_dataset("CBSD68")
    with pytest.raises(FileNotFoundError, match="CBSD68"):
        open_dataset("CBSD68", tmp_path)
    with pytest.raises(FileNotFoundError, match="data root not found"):
        open_dataset("CBSD68", tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*CBSD68"):
        open_dataset("nope", tmp_path)


def test_folder_path_order_and_filtering(tmp_path):
    for name in ("b10.png", "b2.png", "a.bmp"):
        Image.fromarray(_rgb(3, 3)).save(tmp_path / name)
    (tmp_path / "README.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    ds = open_dataset(str(tmp_path))
    assert ds.names == ["a.bmp", "b10.png", "b2.png"]  # plain string order
    with pytest.raises(IndexError):
        ds[3]


def test_io_errors_name_the_file_or_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images .* in folder .*empty"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolder(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    ds = ImageFolder(bad)
    with pytest.raises(ValueError, match="cannot decode image .*broken.png"):
        ds[0]
    with pytest.raises(FileNotFoundError, match="gone.png"):
        read_image(bad / "gone.png")
    Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)).save(bad / "deep.png")
    with pytest.raises(ValueError, match="deep.png"):
        read_image(bad / "deep.png")


def test_alpha_and_palette_become_rgb(tmp_path):
    arr = _rgb(4, 4)
    Image.fromarray(np.dstack([arr, np.full((4, 4), 7, np.uint8)])).save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), arr)
    Image.fromarray(arr).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (4, 4, 3)


def test_rgb_to_grey_rejects_wrong_input():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        rgb_to_grey(np.zeros((4, 4, 1), np.uint8))


def test_paired_folders(tmp_path):
    (tmp_path / "lq").mkdir()
    (tmp_path / "hq").mkdir()
    for i in range(3):
        Image.fromarray(_rgb(5, 6, i)).save(tmp_path / "hq" / f"{i}.png")
        Image.fromarray(_rgb(5, 6, 10 + i)).save(tmp_path / "lq" / f"{i}.png")
    ds = PairedImageFolder(tmp_path / "lq", tmp_path / "hq")
    noisy, clean = ds[2]
    assert ds.name == tmp_path.name and len(ds) == 3 and ds.names == ["0.png", "1.png", "2.png"]
    assert torch.equal((clean * 255).round().byte(), torch.from_numpy(_rgb(5, 6, 2)).permute(2, 0, 1))
    assert torch.equal((noisy * 255).round().byte(), torch.from_numpy(_rgb(5, 6, 12)).permute(2, 0, 1))
    Image.fromarray(_rgb(5, 6)).save(tmp_path / "lq" / "extra.png")
    with pytest.raises(ValueError, match="extra"):
        PairedImageFolder(tmp_path / "lq", tmp_path / "hq")


def test_builtin_needs_no_download(monkeypatch):
    import skimage.data

    # Every builtin image is a file shipped inside the skimage package (what a fresh install has) ...
    package_files = {"astronaut": "astronaut.png", "chelsea": "chelsea.png", "coffee": "coffee.png",
                     "rocket": "rocket.jpg", "hubble_deep_field": "hubble_deep_field.jpg",
                     "immunohistochemistry": "ihc.png", "retina": "retina.jpg",
                     "motorcycle_left": "motorcycle_left.png", "motorcycle_right": "motorcycle_right.png"}
    data_dir = Path(skimage.data.__file__).parent
    assert sorted(package_files) == sorted(BUILTIN_SPLITS["train"] + BUILTIN_SPLITS["test"])
    assert all((data_dir / f).is_file() for f in package_files.values())

    # ... and loading works with the network cut off.
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    test, train = open_dataset("builtin"), open_dataset("builtin-train")
    assert test.name == "builtin" and train.name == "builtin-train"
    assert not set(test.names) & set(train.names)
    shapes = {n: tuple(x.shape) for ds in (test, train) for n, x in zip(ds.names, ds)}
    assert shapes["astronaut"] == (3, 512, 512) and shapes["coffee"] == (3, 400, 600)
    assert shapes["retina"] == (3, 1411, 1411) and shapes["motorcycle_left"] == (3, 500, 741)
    assert shapes["rocket"] == (3, 427, 640) and shapes["motorcycle_right"] == (3, 500, 741)
    assert not torch.equal(test[3], train[0]) and test.names[3] == "rocket"
    for ds in (test, train):
        for x in ds:
            assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_builtin_grey_is_bt601():
    colour, grey = BuiltinImages("test"), BuiltinImages("test", channels=1)
    rgb = colour.read(1).astype(np.float64)
    expected = np.rint(rgb @ np.array([0.299, 0.587, 0.114]))
    assert np.array_equal(grey.read(1)[:, :, 0], expected.astype(np.uint8))
    with pytest.raises(ValueError, match="unknown builtin split"):
        BuiltinImages("val")
