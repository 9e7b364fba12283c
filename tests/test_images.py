"""Image loading: every kind of bad or unusual file gives a one-line ImageError or a correct RGB image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import geofast as gf
from conftest import make_photo
from geofast.images import expand_images, load_image


def test_plain_rgb_matches_pil_convert(tmp_path):
    p = make_photo(tmp_path / "a.png", seed=1)
    np.testing.assert_array_equal(np.asarray(load_image(p)), np.asarray(Image.open(p).convert("RGB")))


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = 255  # left half white
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.size == (40, 80)
    a = np.asarray(out).mean(axis=(1, 2))
    assert a[:30].mean() > 200 and a[-30:].mean() < 50  # white on top after rotation


def test_unusual_modes(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # red in CMYK
    r, g, b = np.asarray(load_image(tmp_path / "cmyk.jpg")).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60

    g16 = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out = np.asarray(load_image(tmp_path / "g16.png"))
    assert out.shape == (64, 64, 3)
    np.testing.assert_allclose(out[..., 0].astype(float), np.rint(g16 / 257.0), atol=1)  # not clipped to white

    Image.new("RGBA", (10, 10), (10, 200, 30, 0)).save(tmp_path / "alpha.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "alpha.png"))[0, 0], [10, 200, 30])

    frames = [Image.new("RGB", (12, 12), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert tuple(np.asarray(load_image(tmp_path / "anim.gif"))[0, 0]) == (255, 0, 0)

    pal = Image.new("P", (8, 8), 3)
    pal.info["transparency"] = 3
    pal.save(tmp_path / "pal.png", transparency=3)
    assert load_image(tmp_path / "pal.png").mode == "RGB"


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "truncated", "folder", "bomb"])
def test_bad_files_raise_one_line_image_error(tmp_path, kind, monkeypatch):
    good = make_photo(tmp_path / "good.jpg", seed=2, size=(200, 200))
    target = tmp_path / f"{kind}.jpg"
    if kind == "empty":
        target.write_bytes(b"")
    elif kind == "text":
        target.write_text("this is not an image")
    elif kind == "truncated":
        data = good.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif kind == "folder":
        target.mkdir()
    elif kind == "bomb":
        monkeypatch.setenv("GEOFAST_MAX_IMAGE_PIXELS", "1000")
        target = good
    with pytest.raises(gf.ImageError) as info:
        load_image(target)
    msg = str(info.value)
    assert "\n" not in msg and str(target) in msg
    expected = {
        "missing": "no such file",
        "empty": "empty file",
        "text": "not an image",
        "truncated": "truncated",
        "folder": "is a folder",
        "bomb": "decompression bomb",
    }[kind]
    assert expected in msg


def test_expand_images(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jpg", "a.PNG", "sub/c.webp"):
        make_photo(tmp_path / name, seed=3, size=(20, 20), fmt="PNG" if name.endswith("PNG") else None)
    (tmp_path / "notes.txt").write_text("x")
    found = expand_images([tmp_path])
    assert [p.split("/")[-1] for p in found] == ["a.PNG", "b.jpg", "c.webp"]
    assert expand_images([str(tmp_path / "*.jpg")]) == [str(tmp_path / "b.jpg")]
    with pytest.raises(gf.ImageError, match="matches no file"):
        expand_images([str(tmp_path / "*.gif")])
    with pytest.raises(gf.ImageError, match="no such file"):
        expand_images([tmp_path / "nope.jpg"])


def test_load_image_bytes_matches_load_image(photo_dir):
    """Uploads and downloads decode exactly like files; the header can be read before decoding."""
    from geofast.images import PixelLimitError, load_image, load_image_bytes, open_image_bytes

    for path in sorted(photo_dir.iterdir())[:3]:
        data = path.read_bytes()
        np.testing.assert_array_equal(np.asarray(load_image_bytes(data, path.name)), np.asarray(load_image(path)))
        header = open_image_bytes(data, path.name)
        assert header.size == Image.open(path).size
        np.testing.assert_array_equal(np.asarray(load_image_bytes(header, path.name)), np.asarray(load_image(path)))
    with pytest.raises(gf.ImageError, match="empty file"):
        load_image_bytes(b"", "x.jpg")
    with pytest.raises(PixelLimitError, match="exceeds the limit of 100"):
        load_image_bytes(open_image_bytes(path.read_bytes(), "p"), "p", limit_pixels=100)
