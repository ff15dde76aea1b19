"""The in-memory sample form and image conversion."""
import numpy as np
import pytest
from helpers import toy_dataset
from PIL import Image

from smearlab.data import DataError, Sample, SmearDataset
from smearlab.data.imageio import read_image, to_rgb8


def test_image_modes_convert_to_rgb8_and_keep_bit_depth(tmp_path):
    grey = np.arange(0, 240, dtype=np.uint8).reshape(12, 20)
    Image.fromarray(grey).save(tmp_path / "g.png")
    rgba = np.dstack([np.full((5, 6, 3), 100, np.uint8), np.zeros((5, 6), np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    deep = (np.arange(120, dtype=np.uint16).reshape(10, 12) * 34)  # max 4046: 12-bit data
    Image.fromarray(deep).save(tmp_path / "d.png")

    img, depth = read_image(tmp_path / "g.png")
    assert img.shape == (12, 20, 3) and img.dtype == np.uint8 and depth == 8
    assert (img[..., 0] == grey).all() and (img[..., 1] == grey).all()
    img, depth = read_image(tmp_path / "a.png")
    assert img.shape == (5, 6, 3) and (img == 100).all()  # alpha dropped, colour kept
    img, depth = read_image(tmp_path / "d.png")
    assert depth == 16 and img.dtype == np.uint8
    assert img.max() >= 250  # 12-bit data scaled from 0..4095, not left dark
    s = Sample("d", path=tmp_path / "d.png")
    assert s.image.shape == (10, 12, 3) and s.bit_depth == 16
    assert s.read_raw().dtype == np.uint16 and s.read_raw().max() == 4046


def test_float_and_bool_images():
    assert to_rgb8(np.ones((2, 2), np.float32))[0].max() == 255
    assert to_rgb8(np.ones((2, 2), bool)) [1] == 1
    with pytest.raises(DataError, match="zero size"):
        to_rgb8(np.zeros((0, 4), np.uint8))


def test_float_images_outside_0_1_are_scaled_not_clipped():
    ramp = np.linspace(0, 255, 256, dtype=np.float32)[None].repeat(2, axis=0)  # an 8-bit image stored as floats
    img, depth = to_rgb8(ramp)
    assert depth == 32 and img[0, 130, 0] == 130 and img.max() == 255
    assert to_rgb8(ramp / 255)[0][0, 130, 0] == 130
    assert to_rgb8(ramp * 16)[0][0, 130, 0] == round(130 * 16 * 255 / 4095)  # 12-bit range
    assert to_rgb8(np.array([[np.nan, -5.0], [0.5, 1.0]]))[0][..., 0].tolist() == [[0, 0], [128, 255]]


def test_sixteen_bit_colour_files_keep_their_range(tmp_path):
    """PIL reads 16-bit colour files as 8 bits (the high byte): a 12-bit colour TIFF came out
    16 times too dark and said it was 8-bit. TIFFs are now read whole; a PNG keeps PIL's 8 bits on
    the 16-bit scale and warns when the data used only the low bits."""
    import tifffile

    data = np.zeros((6, 8, 3), np.uint16)
    data[..., 0] = np.arange(8) * 585  # 0..4095: 12-bit data
    data[..., 1] = 4095
    tifffile.imwrite(tmp_path / "c12.tif", data, photometric="rgb")
    img, depth = read_image(tmp_path / "c12.tif")
    assert depth == 16 and img[0, 7, 0] == 255 and img[0, 4, 0] == round(4 * 585 * 255 / 4095)
    assert img[..., 1].min() == 255
    full = (data.astype(np.uint32) * 16).astype(np.uint16)  # the same data on the full 16-bit range
    png = tmp_path / "c16.png"
    _write_png16(png, full)
    img, depth = read_image(png)
    assert depth == 16 and img[0, 7, 0] >= 254 and img[..., 1].min() >= 254
    _write_png16(png, data)
    from smearlab.data import imageio
    imageio._SAID_ONCE.discard("png16")  # said once per process
    with pytest.warns(UserWarning, match="below a quarter of the 16-bit range; .* only 16 levels"):
        img, _ = read_image(png)
    assert img[..., 1].min() >= 230  # bright, as the TIFF, with fewer levels


def _write_png16(path, rgb16: np.ndarray) -> None:
    """A 16-bit RGB PNG (colour type 2, bit depth 16) written by hand: PIL cannot write one."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    h, w, _ = rgb16.shape
    rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_corrupt_and_missing_images_name_the_file(tmp_path):
    good = tmp_path / "x.jpg"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(good)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match="truncated.jpg"):
        read_image(bad)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="junk.png.*not a readable image"):
        read_image(junk)
    with pytest.raises(DataError, match="missing.png: image file not found"):
        Sample("m", path=tmp_path / "missing.png").image


def test_sample_checks_shapes():
    img = np.zeros((8, 10, 3), np.uint8)
    with pytest.raises(DataError, match="2 boxes but 1 labels"):
        Sample("a", boxes=[[0, 0, 1, 1], [0, 0, 2, 2]], labels=[0])
    s = Sample("a", boxes=[[0, 0, 4, 4]], labels=[0], _image=img)
    with pytest.raises(DataError, match="mask size"):
        s.masks = np.zeros((1, 9, 10), bool)
    with pytest.raises(DataError, match=r"expected \(1, H, W\)"):
        s.masks = np.zeros((2, 8, 10), bool)
    with pytest.raises(DataError, match="semantic mask size"):
        s.semantic = np.zeros((8, 11), np.uint8)
    with pytest.raises(DataError, match="uint8 RGB"):
        Sample("b", _image=np.zeros((8, 10), np.uint8))
    s.masks = lambda: np.ones((1, 8, 10), bool)  # lazy masks are checked when read
    assert s.has_masks and s.masks.shape == (1, 8, 10)
    # arrays given to the constructor are checked there too
    with pytest.raises(DataError, match="mask size"):
        Sample("c", boxes=[[0, 0, 4, 4]], labels=[0], _image=img, _masks=np.zeros((1, 9, 10), bool))
    with pytest.raises(DataError, match=r"expected \(1, H, W\)"):
        Sample("c", boxes=[[0, 0, 4, 4]], labels=[0], _masks=np.zeros((3, 8, 10), bool))
    with pytest.raises(DataError, match="semantic mask size"):
        Sample("c", _image=img, _semantic=np.zeros((7, 10), np.uint8))
    ok = Sample("c", boxes=[[0, 0, 4, 4]], labels=[0], _image=img, _masks=np.ones((8, 10), np.uint8))
    assert ok.masks.shape == (1, 8, 10) and ok.masks.dtype == bool


def test_dataset_rejects_labels_outside_classes():
    s = Sample("a", boxes=[[0, 0, 1, 1]], labels=[3], _image=np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="label 3 outside the 2 classes"):
        SmearDataset([s], ["RBC", "WBC"])


def test_dataset_summary_subset_concat():
    ds = toy_dataset(6)
    assert len(ds) == 6 and sum(ds.class_counts().values()) == ds.num_objects
    sub = ds[1:3]
    assert len(sub) == 2 and sub[0] is ds[1]
    both = SmearDataset.concat([ds, sub])
    assert len(both) == 8
    other = toy_dataset(2, classes=("a", "b"))
    with pytest.raises(ValueError, match="cannot concatenate"):
        SmearDataset.concat([ds, other])
    assert ds.summary()["images"] == 6
    doms = ds.by_domain()
    assert list(doms) == ["A", "B"] and len(doms["A"]) == 3 and all(s.domain == "A" for s in doms["A"])


def test_open_dataset_extracts_archives_once(tmp_path, monkeypatch):
    import tarfile

    from smearlab.data import open_dataset, save
    from smearlab.data.open import extract

    monkeypatch.setenv("SMEARLAB_CACHE", str(tmp_path / "cache"))
    save(toy_dataset(3), tmp_path / "voc", "voc")
    archive = tmp_path / "toy.tar.xz"
    with tarfile.open(archive, "w:xz") as tf:
        tf.add(tmp_path / "voc", arcname="voc")
    ds = open_dataset(archive)  # extracted, then the single top folder "voc" is loaded
    assert len(ds) == 3 and ds.format == "voc"
    from smearlab import cli
    assert cli.main(["data", str(archive)]) == 0  # the command opens archives too (it refused them)
    folder = extract(archive)
    assert folder.parent == tmp_path / "cache" / "extracted" and (folder / "voc" / "Annotations").is_dir()
    assert extract(archive) == folder  # cached

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        info = tarfile.TarInfo("../outside.txt")
        data = b"x"
        info.size = len(data)
        import io
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="evil.tar: unsafe archive member refused"):
        extract(evil)
    assert not (tmp_path / "cache" / "outside.txt").exists()
    assert not list((tmp_path / "cache" / "extracted").glob("evil*"))
    broken = tmp_path / "broken.tar.xz"
    broken.write_bytes(b"not an archive")
    with pytest.raises(DataError, match="broken.tar.xz"):
        open_dataset(broken)


def test_only_the_exact_synthetic_names_make_synthetic_data(tmp_path, monkeypatch):
    """A folder named like 'synthetic_cells' or 'synthetic-A' was generated data (or a bare
    IndexError), not the folder."""
    from smearlab.data import open_dataset, save
    monkeypatch.chdir(tmp_path)
    save(toy_dataset(2), tmp_path / "synthetic_cells", "voc")
    ds = open_dataset("synthetic_cells")
    assert ds.format == "voc" and len(ds) == 2
    assert open_dataset("synthetic-A").name == "synthetic-A"
    with pytest.raises(DataError, match="synthetic-cells: path does not exist"):
        open_dataset("synthetic-cells")


def test_review_edges_of_the_readers_and_names(tmp_path, monkeypatch, capsys):
    """A 16-bit colour TIFF tifffile cannot decode (LZW without imagecodecs) falls back to PIL's
    8 bits with a warning; a float image in 0..1 with a little overshoot stays 0..1; the synthetic
    names in `smearlab data`."""
    import tifffile

    from smearlab import cli
    data = np.full((4, 5, 3), 4095, np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", data, photometric="rgb")

    def cannot(*a, **kw):
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")
    monkeypatch.setattr(tifffile, "TiffFile", cannot)
    from smearlab.data import imageio
    monkeypatch.setattr(imageio, "_SAID_ONCE", set())
    with pytest.warns(UserWarning) as caught:
        img, depth = read_image(tmp_path / "c.tif")
    said = " ".join(str(w.message) for w in caught)
    assert "tifffile cannot decode" in said and "only 16 levels" in said  # and the 12-bit data lose precision
    assert depth == 16 and img.min() >= 230
    over = np.array([[0.5, 1.0001]])
    assert to_rgb8(over)[0][0, :, 0].tolist() == [128, 255]
    assert cli.main(["data", "synthetic"]) == 0
    assert '"format": "synthetic"' in capsys.readouterr().out
    assert cli.main(["data", "synthetic", "--split", "train"]) == 2


def _png16_grey(path, grey16: np.ndarray, sbit: int | None = None) -> None:
    """A 16-bit grey PNG written by hand, with an ``sBIT`` chunk (significant bits) when given."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    h, w = grey16.shape
    rows = b"".join(b"\x00" + grey16[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
                     + (chunk(b"sBIT", bytes([sbit])) if sbit else b"")
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_frames_of_one_camera_scale_alike_when_the_bit_depth_is_known(tmp_path, monkeypatch):
    """Each 16-bit image was scaled from the range its own largest value fits: a 12-bit frame at a
    quarter of the exposure read exactly as bright as the full one, silently."""
    from smearlab.data import open_dataset
    from smearlab.data import imageio

    monkeypatch.setattr(imageio, "_SAID_ONCE", set())
    scene = np.array([[0.2, 0.5], [0.9, 0.3]])
    (tmp_path / "set" / "rbc").mkdir(parents=True)
    for name, exposure in (("bright", 4000), ("dim", 1000)):
        Image.fromarray((scene * exposure).astype(np.uint16)).save(tmp_path / "set" / "rbc" / f"{name}.png")
    with pytest.warns(UserWarning, match=r"bright.png: uint16 data scaled from the 12-bit range .* guessed per image"):
        guessed = {s.image_id: s.image[..., 0] for s in open_dataset(tmp_path / "set", format="imagefolder")}
    assert (guessed["rbc/bright.png"] == guessed["rbc/dim.png"]).all()  # what the warning is about
    known = {s.image_id: s.image[..., 0] for s in open_dataset(tmp_path / "set", format="imagefolder", sensor_bits=12)}
    assert known["rbc/bright.png"].tolist() == [[50, 125], [224, 75]]
    assert known["rbc/dim.png"].tolist() == [[12, 31], [56, 19]]  # a quarter as bright
    # a PNG that declares its significant bits (sBIT) is scaled by them, without a warning
    _png16_grey(tmp_path / "declared.png", (scene * 1000).astype(np.uint16), sbit=12)
    assert imageio.declared_bits(tmp_path / "declared.png") == 12
    assert read_image(tmp_path / "declared.png")[0][..., 0].tolist() == [[12, 31], [56, 19]]
    # ... and one whose samples were scaled up to the full range, as the PNG specification has them
    v = (scene * 1000).astype(np.uint16)
    _png16_grey(tmp_path / "spec.png", (v << 4) | (v >> 8), sbit=12)
    expected = np.floor(((v.astype(np.int64) << 4) | (v >> 8)) * 255 / 65535 + 0.5).astype(int)
    assert read_image(tmp_path / "spec.png")[0][..., 0].tolist() == expected.tolist()  # not clipped to white
    # values above a given range are clipped, and said
    with pytest.warns(UserWarning, match="above the 8-bit range"):
        assert read_image(tmp_path / "declared.png", bits=8)[0].max() == 255
    with pytest.raises(ValueError, match="sensor_bits"):
        open_dataset(tmp_path / "set", format="imagefolder", sensor_bits=12.5)
    with pytest.raises(ValueError, match="sensor_bits name files"):
        open_dataset("synthetic", sensor_bits=12)
    from smearlab import cli
    assert cli.main(["data", str(tmp_path / "set"), "--format", "imagefolder", "--sensor-bits", "12"]) == 0


def test_unusual_wide_files_read_the_right_way_up_and_round(tmp_path):
    import tifffile

    from smearlab.data.imageio import read_mask

    # 16-bit min-is-white grey: 0 is white (PIL gave the stored numbers, black and white swapped)
    tifffile.imwrite(tmp_path / "w.tif", np.array([[0, 65535], [16384, 49151]], np.uint16), photometric="miniswhite")
    assert read_image(tmp_path / "w.tif")[0][..., 0].tolist() == [[255, 0], [191, 64]]
    # unsigned 32-bit: PIL reads it signed, so the brightest pixel wrapped to black
    tifffile.imwrite(tmp_path / "u32.tif", np.array([[3_000_000_000, 1_000_000_000]], np.uint32))
    img = read_image(tmp_path / "u32.tif")[0][..., 0]
    assert img[0, 0] > img[0, 1] > 0
    # 0..1 floats with a hot pixel: the others keep their level (they read 255 times too dark)
    f = np.full((20, 20), 0.5, np.float32)
    f[0, 0] = 1.6
    got = to_rgb8(f)[0][..., 0]
    assert got[5, 5] == 128 and got[0, 0] == 255
    # a mask drawn in the alpha channel: its opaque pixels (every pixel was foreground)
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[1:3, 2:5, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").astype(bool).sum() == 6
    coloured = rgba.copy()
    coloured[0, 0, :3] = (9, 9, 9)  # colours differ: transparent pixels are background whatever lies under them
    Image.fromarray(coloured).save(tmp_path / "c.png")
    assert read_mask(tmp_path / "c.png").astype(bool).sum() == 6


def test_animations_and_transparent_pixels_are_said(tmp_path, monkeypatch):
    from smearlab.data import imageio

    monkeypatch.setattr(imageio, "_SAID_ONCE", set())
    frames = [Image.fromarray(np.full((4, 4, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match="animated.* 2 pages or frames; its first alone is read"):
        read_image(tmp_path / "a.gif")
    frames[0].save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=frames[1:])  # a gain map
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(tmp_path / "phone.jpg")  # one picture: nothing said
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[1:3, 1:3] = (200, 100, 150, 255)
    Image.fromarray(rgba).save(tmp_path / "cut.png")
    with pytest.warns(UserWarning, match="transparent pixels are read as the colour stored under them"):
        assert read_image(tmp_path / "cut.png")[0][0, 0].tolist() == [0, 0, 0]


def test_an_image_set_in_place_of_the_files_is_the_one_saved_and_kept(tmp_path):
    """sample.image = ... kept the path: saving the dataset copied the file's old pixels, and
    release() forgot the new ones (read back from the file)."""
    from smearlab.data import load, save
    from smearlab.data.imageio import write_image
    write_image(tmp_path / "src" / "a.png", np.full((8, 8, 3), 10, np.uint8))
    s = Sample("a", path=tmp_path / "src" / "a.png", boxes=[[1, 1, 5, 5]], labels=[0])
    s.image = np.full((8, 8, 3), 200, np.uint8)
    assert s.path is None and s.meta["source_path"] == str(tmp_path / "src" / "a.png")
    s.release()
    assert s.image[0, 0].tolist() == [200, 200, 200]
    save(SmearDataset([s], ["RBC"], "x"), tmp_path / "out", "voc")
    assert load(tmp_path / "out")[0].image[0, 0].tolist() == [200, 200, 200]
