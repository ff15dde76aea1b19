"""Image reading that gave wrong numbers without a word: a dim 12-bit PNG read 16 times too bright
and one with alpha 16 times too dark, 16-bit colour PNG masks lost their labels, a float
min-is-white TIFF was not turned over, signed and palette DICOM read wrongly, an inverted palette
mask swapped object and background, compressed oriented TIFFs were refused, and atomic writes
failed on long names, widened a private file's mode and replaced a link by a file."""
from __future__ import annotations

import os
import stat
import struct
import warnings
import zlib

import numpy as np
import pytest
from helpers import write_dicom
from PIL import Image

from smearlab.core.files import atomic_path, write_text
from smearlab.data import DataError
from smearlab.data import imageio
from smearlab.data.imageio import read_binary_mask, read_image, read_mask, read_raw


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png16(path, a: np.ndarray, colour_type: int, sbit: list[int] | None = None) -> None:
    """A 16-bit PNG written by hand (colour type 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA), with an sBIT chunk."""
    h, w = a.shape[:2]
    rows = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + (_chunk(b"sBIT", bytes(sbit)) if sbit else b"")
                     + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))


def _orient(a: np.ndarray, o: int) -> np.ndarray:
    """``a`` as stored, shown as the EXIF orientation ``o`` says."""
    t = (1, 0) + tuple(range(2, a.ndim))
    return {1: a, 2: a[:, ::-1], 3: a[::-1, ::-1], 4: a[::-1], 5: a.transpose(t), 6: np.rot90(a, -1),
            7: np.rot90(a, 2).transpose(t), 8: np.rot90(a, 1)}[o]


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(imageio, "_SAID_ONCE", set())


# -- 1, 2. sBIT ------------------------------------------------------------------------------------

def test_dim_and_bright_spec_scaled_sbit_frames_of_one_camera_read_alike(tmp_path):
    scene = np.array([[0.05, 0.1], [0.2, 0.25]])
    for name, exposure in (("bright", 4000), ("dim", 1000)):
        v = (scene * exposure).astype(np.uint16)  # the camera's 12-bit values
        spec = ((v.astype(np.uint32) << 4) | (v >> 8)).astype(np.uint16)  # as the PNG specification scales them
        _png16(tmp_path / f"{name}.png", spec, 0, [12])
        right = np.floor(v / 4095 * 255 + 0.5).astype(int)
        got = read_image(tmp_path / f"{name}.png")[0][..., 0].astype(int)
        assert np.abs(got - right).max() <= 1, (name, got.tolist(), right.tolist())  # dim read 16x too bright
    # a plain left shift and linear scaling are the specification's too
    v = np.array([[50, 100], [200, 250]], np.uint16)
    _png16(tmp_path / "shift.png", v << 4, 0, [12])
    _png16(tmp_path / "linear.png", np.floor(v.astype(float) * 65535 / 4095 + 0.5).astype(np.uint16), 0, [12])
    for name in ("shift", "linear"):
        assert read_image(tmp_path / f"{name}.png")[0][..., 0].tolist() == [[3, 6], [12, 16]]
    # samples stored unscaled (the camera's numbers) beside an sBIT keep their declared 12-bit range
    _png16(tmp_path / "unscaled.png", np.array([[200, 500], [900, 300]], np.uint16), 0, [12])
    assert read_image(tmp_path / "unscaled.png")[0][..., 0].tolist() == [[12, 31], [56, 19]]


def test_sbit_png_with_alpha_reads_as_without(tmp_path):
    g = np.array([[0, 1024, 2048, 4095]], np.uint16)
    opaque = np.full_like(g, 65535)
    _png16(tmp_path / "rgb.png", np.dstack([g, g, g]), 2, [12, 12, 12])
    _png16(tmp_path / "rgba.png", np.dstack([g, g, g, opaque]), 6, [12, 12, 12, 16])
    _png16(tmp_path / "la.png", np.dstack([g, opaque]), 4, [12, 16])
    _png16(tmp_path / "grey.png", g, 0, [12])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 16-bit colour PNG's lost levels
        rgb = read_image(tmp_path / "rgb.png")[0][..., 0].tolist()
        assert rgb == [[0, 64, 128, 240]]  # PIL's high byte: 4095 -> 15 * 257
        assert read_image(tmp_path / "rgba.png")[0][..., 0].tolist() == rgb  # was [[0, 4, 8, 15]]
        assert read_image(tmp_path / "la.png")[0][..., 0].tolist() == rgb
    assert read_image(tmp_path / "grey.png")[0][..., 0].tolist() == [[0, 64, 128, 255]]


# -- 3. 16-bit colour PNG masks -------------------------------------------------------------------

def test_sixteen_bit_colour_png_masks_are_refused(tmp_path):
    lab = np.array([[0, 1, 2, 3], [0, 1, 300, 3]], np.uint16)
    _png16(tmp_path / "lab16rgb.png", np.dstack([lab] * 3), 2)
    _png16(tmp_path / "bin16rgb.png", np.dstack([(lab > 0).astype(np.uint16)] * 3), 2)
    _png16(tmp_path / "lab16grey.png", lab, 0)
    for name in ("lab16rgb.png", "bin16rgb.png"):
        with pytest.raises(DataError, match=rf"{name}: a 16-bit colour PNG mask.*high byte"):
            read_mask(tmp_path / name)  # was [[0, 0, 0, 0], [0, 0, 257, 0]]
        with pytest.raises(DataError, match=rf"{name}: a 16-bit colour PNG mask"):
            read_binary_mask(tmp_path / name)  # was empty
    assert read_mask(tmp_path / "lab16grey.png").tolist() == lab.tolist()  # grey keeps its values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert read_image(tmp_path / "lab16rgb.png")[0].shape == (2, 4, 3)  # an image keeps the 8-bit reading


# -- 4. float min-is-white TIFF ---------------------------------------------------------------------

def test_float_min_is_white_tiff_is_refused(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "mwf.tif", np.array([[0, 1, 0.25]], np.float32), photometric="miniswhite")
    with pytest.raises(DataError, match=r"mwf\.tif: a floating-point min-is-white TIFF"):
        read_image(tmp_path / "mwf.tif")  # read as min-is-black: black and white swapped
    tifffile.imwrite(tmp_path / "f.tif", np.array([[0, 1, 0.25]], np.float32))
    assert read_image(tmp_path / "f.tif")[0][..., 0].tolist() == [[0, 255, 64]]


# -- 5. DICOM ---------------------------------------------------------------------------------------

def test_dicom_signed_monochrome2_is_shifted_not_clipped(tmp_path):
    pytest.importorskip("pydicom")
    signed = np.array([[-2048, -1024, 0, 1024, 2047]], np.int16)
    write_dicom(tmp_path / "m2.dcm", signed, "MONOCHROME2", 12)
    write_dicom(tmp_path / "m1.dcm", signed, "MONOCHROME1", 12)
    m2 = read_image(tmp_path / "m2.dcm")[0][0, :, 0].tolist()
    assert m2 == [0, 64, 128, 191, 255]  # was [0, 0, 0, 64, 127]: below 0 clipped to black
    assert read_image(tmp_path / "m1.dcm")[0][0, :, 0].tolist() == [255 - v for v in m2]  # its mirror


def test_dicom_palette_colour_is_looked_up_and_other_interpretations_refused(tmp_path):
    pytest.importorskip("pydicom")
    # PALETTE COLOR: index 1 is pure green (the indices were read as grey)
    idx = np.array([[0, 1], [1, 2]], np.uint8)
    r, g, b = np.zeros(256, np.uint8), np.zeros(256, np.uint8), np.zeros(256, np.uint8)
    g[1], r[2] = 255, 200
    lut = {f"{c}PaletteColorLookupTableDescriptor": [256, 0, 8] for c in ("Red", "Green", "Blue")}
    lut.update(RedPaletteColorLookupTableData=r.tobytes(), GreenPaletteColorLookupTableData=g.tobytes(),
               BluePaletteColorLookupTableData=b.tobytes())
    write_dicom(tmp_path / "pal.dcm", idx, "PALETTE COLOR", 8, extra=lut)
    img = read_image(tmp_path / "pal.dcm")[0]
    assert img[0, 0].tolist() == [0, 0, 0] and img[0, 1].tolist() == [0, 255, 0] and img[1, 1].tolist() == [200, 0, 0]
    # a 16-bit lookup table spans the 16-bit range
    lut16 = {f"{c}PaletteColorLookupTableDescriptor": [256, 0, 16] for c in ("Red", "Green", "Blue")}
    g16 = np.zeros(256, np.uint16)
    g16[1] = 65535
    lut16.update(RedPaletteColorLookupTableData=np.zeros(256, np.uint16).tobytes(),
                 GreenPaletteColorLookupTableData=g16.tobytes(),
                 BluePaletteColorLookupTableData=np.zeros(256, np.uint16).tobytes())
    write_dicom(tmp_path / "pal16.dcm", idx, "PALETTE COLOR", 8, extra=lut16)
    assert read_image(tmp_path / "pal16.dcm")[0][0, 1].tolist() == [0, 255, 0]
    # an interpretation not handled is refused, not guessed
    write_dicom(tmp_path / "hsv.dcm", np.zeros((2, 2, 3), np.uint8), "HSV", 8, samples_per_pixel=3)
    with pytest.raises(DataError, match=r"hsv\.dcm: DICOM photometric interpretation 'HSV' is not read"):
        read_image(tmp_path / "hsv.dcm")


# -- 6. palette masks whose index 0 is not black ---------------------------------------------------

def test_palette_mask_whose_index_0_is_not_black_is_refused(tmp_path):
    m = np.zeros((20, 30), np.uint8)
    m[5:9, 10:15] = 255
    q = Image.fromarray(m).convert("RGB").quantize(2)
    assert q.getpalette()[:3] == [255, 255, 255]  # index 0 white: the object is index 1's background
    q.save(tmp_path / "inverted.png")
    with pytest.raises(DataError, match=r"inverted\.png: palette mask whose index 0 is not black"):
        read_binary_mask(tmp_path / "inverted.png")  # was 596 pixels of background as the object
    assert read_mask(tmp_path / "inverted.png").sum() == 20 * 30 - 20  # label images keep their indices
    # VOC-style class palette (index 0 black): binary and label reading as before
    idx = np.array([[0, 1, 2, 0], [1, 1, 15, 0]], np.uint8)
    voc = Image.new("P", (4, 2))
    voc.putdata(idx.ravel().tolist())
    voc.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [64, 64, 64] * 253)
    voc.save(tmp_path / "voc.png")
    assert read_mask(tmp_path / "voc.png").tolist() == idx.tolist()
    assert read_binary_mask(tmp_path / "voc.png").tolist() == (idx > 0).tolist()
    black_first = Image.new("P", (30, 20))  # a two-colour mask, index 0 black
    black_first.putdata((m > 0).astype(int).ravel().tolist())
    black_first.putpalette([0, 0, 0, 255, 255, 255])
    black_first.save(tmp_path / "black_first.png")
    assert read_binary_mask(tmp_path / "black_first.png").sum() == 20


# -- 7. compressed oriented TIFFs ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["L", "RGB", "I;16"])
def test_compressed_oriented_tiffs_are_read_through_pil(tmp_path, mode):
    rng = np.random.default_rng(0)
    a = {"L": rng.integers(0, 256, (20, 32), dtype=np.uint8),
         "RGB": rng.integers(0, 256, (20, 32, 3), dtype=np.uint8),
         "I;16": rng.integers(0, 65536, (20, 32), dtype=np.uint16)}[mode]
    for o in range(2, 9):
        im = Image.fromarray(a)
        ex = im.getexif()
        ex[0x0112] = o
        im.save(tmp_path / f"o{o}.tif", exif=ex, compression="tiff_lzw")  # tifffile needs imagecodecs for LZW
        shown = read_raw(tmp_path / f"o{o}.tif")
        assert shown.dtype == a.dtype and np.array_equal(shown, _orient(a, o)), o  # was refused
        assert np.array_equal(read_raw(tmp_path / f"o{o}.tif", orientation="stored"), a), o
    if mode == "RGB":  # JPEG in TIFF, lossy
        im = Image.fromarray(a)
        ex = im.getexif()
        ex[0x0112] = 6
        im.save(tmp_path / "jpeg.tif", exif=ex, compression="jpeg", quality=100)
        got = read_raw(tmp_path / "jpeg.tif").astype(int)
        assert got.shape == (32, 20, 3) and np.abs(got - _orient(a, 6)).mean() < 20


def test_unsigned_32_bit_lzw_tiff_says_it_needs_imagecodecs(tmp_path):
    a = np.zeros((4, 6, 3), np.uint8)
    a[0, :3] = 200
    im = Image.fromarray(a)
    ex = im.getexif()
    ex[0x0112] = 6
    im.save(tmp_path / "rgb.tif", exif=ex, compression="tiff_lzw")
    assert np.argwhere(read_image(tmp_path / "rgb.tif")[0][..., 0] > 100).tolist() == [[0, 3], [1, 3], [2, 3]]
    # an unsigned 32-bit LZW TIFF: its compression needs imagecodecs; it is not corrupt
    Image.fromarray(np.array([[0, 1_000_000, 2_000_000_000, 50]], np.int32), mode="I").save(
        tmp_path / "u32.tif", compression="tiff_lzw")
    b = bytearray((tmp_path / "u32.tif").read_bytes())
    off = struct.unpack("<I", b[4:8])[0]
    for k in range(struct.unpack("<H", b[off:off + 2])[0]):
        e = off + 2 + 12 * k
        if struct.unpack("<H", b[e:e + 2])[0] == 339:  # SampleFormat: unsigned
            b[e + 8:e + 10] = struct.pack("<H", 1)
    (tmp_path / "u32.tif").write_bytes(bytes(b))
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match=r"u32\.tif: its compression \(tiff_lzw\) needs the optional imagecodecs"):
            read_image(tmp_path / "u32.tif")
    else:
        assert read_raw(tmp_path / "u32.tif").dtype == np.uint32


# -- 8. atomic_path ---------------------------------------------------------------------------------

def test_atomic_path_writes_a_name_near_the_length_limit(tmp_path):
    long = tmp_path / ("a" * 250 + ".txt")  # a valid 254-character name
    write_text(long, "x")  # the temporary name was 14 characters longer: "File name too long"
    assert long.read_text() == "x" and sorted(os.listdir(tmp_path)) == [long.name]


def test_atomic_path_keeps_an_existing_files_mode(tmp_path):
    keep = tmp_path / "private.txt"
    keep.write_text("old")
    os.chmod(keep, 0o600)
    write_text(keep, "new")
    assert keep.read_text() == "new" and stat.S_IMODE(keep.stat().st_mode) == 0o600  # was 0o644


def test_atomic_path_writes_through_a_symlink(tmp_path):
    (tmp_path / "real.txt").write_text("real")
    os.symlink("real.txt", tmp_path / "link.txt")
    with atomic_path(tmp_path / "link.txt") as tmp:
        assert tmp.parent == tmp_path and len(tmp.name) < 60
        tmp.write_text("through the link")
    assert (tmp_path / "link.txt").is_symlink()  # was replaced by a regular file
    assert (tmp_path / "real.txt").read_text() == "through the link"
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "real.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert (tmp_path / "real.txt").read_text() == "through the link"
    assert sorted(os.listdir(tmp_path)) == ["link.txt", "real.txt"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes whatever the permissions say")
def test_atomic_path_writes_over_a_read_only_file_and_keeps_it_read_only(tmp_path):
    """The permissions were copied onto the temporary file before the write: a read-only file
    could no longer be written over."""
    p = tmp_path / "ro.txt"
    write_text(p, "old")
    os.chmod(p, 0o444)
    write_text(p, "new")
    assert p.read_text() == "new" and stat.S_IMODE(p.stat().st_mode) == 0o444
