"""Reading images of any common mode into RGB uint8, with clear errors for bad files.

Orientation
-----------
Every image file is read **as it is shown**: the EXIF orientation tag that phones and many
microscope cameras write (a JPEG stored landscape with "rotate 90" in its header) is applied,
as image viewers, CVAT and Ultralytics do. ``orientation="stored"`` reads the pixels as stored
instead; loaders use it only for an image whose annotation file declares the stored size (an
annotation tool that ignored the tag), and count that repair in ``dataset.fixed`` (see
:func:`smearlab.data.formats._common.image_geometry`). Headers are read with
:func:`image_info` (sizes both ways) without decoding pixels.

Intensity scale
---------------
Images wider than 8 bits are scaled to 8 bits from the range that stands for full brightness.
The range a file declares is used when there is one (DICOM ``BitsStored``; a PNG ``sBIT``
chunk where the samples were not scaled up to the full range, as the PNG specification has them:
scaled-up samples, a dim frame's too, are read on the full 16-bit range) or the range the caller
gives (``bits=`` here, ``sensor_bits=`` when a dataset is opened:
``open_dataset(path, sensor_bits=12)`` for a 12-bit camera). Otherwise it is guessed per
image as the smallest usual sensor range that holds the image's largest value (:func:`full_scale`),
which keeps 12-bit data in a 16-bit file bright but scales a dim frame of one camera differently
from a bright one (a 12-bit frame whose largest value is 900 reads as 10-bit data, four times
brighter); a warning says so once per guessed range, naming the first such file.

Masks
-----
:func:`read_mask` reads values, never colours: a palette PNG gives its palette indices; a
colour mask whose channels are equal gives that channel; a colour mask whose channels differ
gives one integer per colour (``r * 65536 + g * 256 + b``), so a green instance is not empty.
A mask drawn in the alpha channel (one colour on a transparent background) gives its opaque
pixels; where the colours differ, transparent pixels are background. A 16-bit colour PNG mask is
refused (PIL gives only the high byte of its values), and so is a palette mask read as binary
(:func:`read_binary_mask`) whose index 0 is not black (which index is the object cannot be told).
"""
from __future__ import annotations

import functools
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import DataError
from ..core.files import atomic_path

#: How an image file's pixels are oriented on read: as shown (EXIF applied) or as stored.
ORIENTATIONS = ("exif", "stored")
#: EXIF tag 0x0112 (Orientation); values 5-8 swap width and height.
_EXIF_ORIENTATION = 0x0112

#: ITU-R BT.601 luma weights (the ones PIL uses for "L"), shared by every grey conversion.
LUMA = (0.299, 0.587, 0.114)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
DICOM_EXTENSIONS = {".dcm", ".dicom"}


def is_image_file(path: Path) -> bool:
    """True for the image extensions smearlab reads (case-insensitive).

    Parameters
    ----------
    path : the file (only its suffix is looked at; DICOM suffixes count too).
    """
    return path.suffix.lower() in IMAGE_EXTENSIONS | DICOM_EXTENSIONS


@dataclass(frozen=True)
class ImageInfo:
    """What an image file's header says: its stored size and its EXIF orientation (1: none).

    Parameters
    ----------
    stored_hw : ``(height, width)`` of the pixels as stored.
    exif_orientation : the EXIF orientation tag, 1..8 (1: none).
    """

    stored_hw: tuple[int, int]
    exif_orientation: int = 1

    @property
    def rotated(self) -> bool:
        """Whether the EXIF orientation changes the pixels (any value but 1)."""
        return self.exif_orientation in range(2, 9)

    @property
    def shown_hw(self) -> tuple[int, int]:
        """``(height, width)`` as shown (EXIF applied): values 5-8 swap the two."""
        h, w = self.stored_hw
        return (w, h) if self.exif_orientation in (5, 6, 7, 8) else (h, w)

    def hw(self, orientation: str = "exif") -> tuple[int, int]:
        """The size read in ``orientation`` (see :data:`ORIENTATIONS`).

        Parameters
        ----------
        orientation : ``"exif"`` (as shown: :attr:`shown_hw`) or ``"stored"`` (:attr:`stored_hw`).
        """
        return self.shown_hw if _check_orientation(orientation) == "exif" else self.stored_hw


def _check_orientation(orientation: str) -> str:
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    return orientation


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation of an open image (1 when absent or unreadable)."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no orientation, not a bad image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def read_raw(path: str | Path, *, orientation: str = "exif", palette: str = "rgb") -> np.ndarray:
    """The image array in its original dtype and channels (PIL or pydicom).

    Parameters
    ----------
    path : the image file (any PIL-readable image, or DICOM).
    orientation : ``"exif"`` (as shown, the default) or ``"stored"``; see the module docstring.
    palette : ``"rgb"`` converts palette images to their colours (images), ``"index"`` keeps
        the palette indices (masks), and refuses a file whose values PIL cannot give (a 16-bit
        colour PNG: PIL keeps the high byte of each value).
    """
    path = _existing_file(path)
    _check_orientation(orientation)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return _read_dicom(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                pages = int(getattr(im, "n_frames", 1) or 1) if im.format in ("TIFF", "GIF", "WEBP", "PNG") else 1
                # a z-stack, one page per channel or an animation, read as one picture (a phone's JPEG
                # with a gain map, MPO, is one picture: not said)
                if pages > 1 and path not in _SAID_PAGES:
                    _SAID_PAGES.add(path)  # once per file: images are read again each epoch
                    kind = "TIFF" if im.format == "TIFF" else f"{im.format or 'image'} (animated)"
                    warnings.warn(f"{path}: a {kind} of {pages} pages or frames; its first alone is read (split a "
                                  "stack, a channels-per-page file or an animation into images first)", stacklevel=2)
                if _tiff_orientation(im) != 1:  # PIL turns these itself, uncompressed grey ones wrongly
                    return _read_oriented_tiff(im, path, orientation, exact=palette == "index")
                if _sixteen_bit_colour(im):
                    return _read_sixteen_bit_colour(im, path, orientation, exact=palette == "index")
                im.load()
                if orientation == "exif" and _exif_orientation(im) != 1:
                    im = ImageOps.exif_transpose(im)
                if im.mode == "P" and palette == "index":
                    return np.array(im)
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("I;16", "I;16B", "I;16L"):
                    arr = np.array(im, dtype=np.uint16)
                    if _tiff_tag(im, 262) == 0:  # min-is-white: 0 is white; PIL returns the stored numbers
                        arr = _min_is_white(arr, _tiff_tag(im, 258), path)
                    return arr
                elif im.mode == "I":
                    if _tiff_tag(im, 262) == 0:
                        raise DataError(path, "a 32-bit min-is-white TIFF: save it as min-is-black grey")
                    if im.format == "TIFF" and _tiff_tag(im, 258) == 32 and _tiff_tag(im, 339) in (None, 1):
                        try:
                            return _first_page(path).astype(np.uint32)  # unsigned: PIL reads it signed (wrapped)
                        except Exception as e:  # noqa: BLE001 - e.g. LZW without imagecodecs: not a corrupt file
                            raise _undecodable(im, path, e) from None
                    return np.array(im, dtype=np.int32)
                elif im.mode == "F" and _tiff_tag(im, 262) == 0:  # no white level to turn it over by, as for "I"
                    raise DataError(path, "a floating-point min-is-white TIFF: save it as min-is-black grey")
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "LA", "PA"):
                    im = im.convert("RGBA" if im.mode in ("LA", "PA") else "RGB")
                return np.array(im)
    except DataError:  # said already, naming the file
        raise
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise DataError(path, f"not a readable image: {type(e).__name__}: {e}{_bomb_hint(e)}") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise DataError(path, f"corrupt or truncated image ({e})") from None


#: multi-page TIFFs whose first-page reading was said (once per file)
_SAID_PAGES: set[Path] = set()


def _tiff_tag(im: Image.Image, tag: int):
    """A TIFF tag's single value (the first of a tuple), or None (not a TIFF, or no such tag)."""
    if im.format != "TIFF":
        return None
    v = getattr(im, "tag_v2", {}).get(tag)
    return v[0] if isinstance(v, (tuple, list)) and v else v


def _min_is_white(arr: np.ndarray, bits, path: Path) -> np.ndarray:
    """A min-is-white grey image turned over within its declared bit range (``bits`` per sample)."""
    bits = int(bits) if isinstance(bits, int) and 1 <= bits <= 16 else 16
    top = (1 << bits) - 1
    return (top - np.minimum(arr, top)).astype(np.uint16)


def _sixteen_bit_colour(im: Image.Image) -> bool:
    """Whether PIL would decode a 16-bit-per-channel colour file to 8 bits (its "RGB" and "RGBA"
    modes hold 8 bits: it keeps the high byte)."""
    raw = [t.args[0] if isinstance(t.args, tuple) else t.args for t in (im.tile or [])]
    bits = getattr(im, "tag_v2", {}).get(258, ()) if im.format == "TIFF" else ()  # BitsPerSample
    bits = bits if isinstance(bits, (tuple, list)) else (bits,)
    return im.mode in ("RGB", "RGBA") and (any(isinstance(r, str) and ";16" in r for r in raw)
                                           or any(isinstance(b, int) and b > 8 for b in bits))  # separate planes


#: How each EXIF orientation value is undone on an ``(H, W, C)`` array: quarter turns
#: counter-clockwise (``np.rot90``) after an optional left-right flip.
_EXIF_UNDO = {1: (False, 0), 2: (True, 0), 3: (False, 2), 4: (True, 2), 5: (True, 1), 6: (False, 3),
              7: (True, 3), 8: (False, 1)}


def _read_sixteen_bit_colour(im: Image.Image, path: Path, orientation: str, exact: bool = False) -> np.ndarray:
    """A 16-bit colour image as ``(H, W, C)`` uint16, which PIL cannot give.

    A TIFF is read whole by tifffile. For a PNG only PIL's 8 bits exist: their values are
    returned on the 16-bit scale (times 257) so that :func:`to_rgb8` treats them as 16-bit data,
    with a warning when the data used only the low bits (12-bit cameras), whose precision is
    lost. ``exact`` (masks, whose values are labels) refuses that 8-bit reading instead."""
    code = _exif_orientation(im) if orientation == "exif" else 1
    arr = None
    if im.format == "TIFF":
        import tifffile

        try:
            arr = _first_page(path)
        except Exception as e:  # noqa: BLE001 - e.g. LZW without the imagecodecs package: PIL's 8 bits below
            warnings.warn(f"{path}: tifffile cannot decode this 16-bit colour TIFF ({e}); read at 8 bits by PIL "
                          "(install imagecodecs to keep its precision)", stacklevel=3)
        if arr is not None and (arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint16):
            raise DataError(path, f"a 16-bit colour TIFF read as {arr.dtype} {arr.shape}; expected (H, W, 3 or 4) "
                                  "uint16")
    if arr is None and exact:  # the high byte of labels: 1, 2, 3 read as 0 and 300 as 257
        raise DataError(path, f"a 16-bit colour {im.format or 'image'} mask: PIL reads only the high byte of "
                              "each value, so its labels cannot be read; save it as grey (8 or 16 bits) or palette"
                              + (" (or install imagecodecs)" if im.format == "TIFF" else ""))
    if arr is None:
        im.load()
        arr = np.array(im).astype(np.uint16) * 257
        high = int(arr[..., :3].max()) // 257  # the colours' high byte (an opaque alpha channel is 65535)
        if high < 64 and "png16" not in _SAID_ONCE:  # a 12- to 14-bit camera's data: at most 64 of the 256
            _SAID_ONCE.add("png16")  # levels of the 8-bit image remain (once: a folder of them would say it each)
            warnings.warn(f"{path}: a 16-bit colour {im.format or 'image'} whose values stay below a quarter of "
                          f"the 16-bit range; PIL reads the high byte alone, so only {high + 1} levels per channel "
                          "remain: save it as an uncompressed 16-bit TIFF to keep its precision", stacklevel=3)
    return _undo_orientation(arr, code)


def _first_page(path: Path) -> np.ndarray:
    """The first page of a TIFF as tifffile decodes it, a colour image stored as separate planes
    (``(3 or 4, H, W)``) turned to ``(H, W, 3 or 4)``."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        arr = np.asarray(page.asarray())
        if int(getattr(page, "planarconfig", 1)) == 2 and arr.ndim == 3:  # PLANARCONFIG.SEPARATE
            arr = np.moveaxis(arr, 0, -1)
    return arr


def _undo_orientation(arr: np.ndarray, code: int) -> np.ndarray:
    """``arr`` as stored, turned as the orientation value ``code`` says it is shown (:data:`_EXIF_UNDO`)."""
    flip, turns = _EXIF_UNDO.get(code, (False, 0))
    if flip:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(np.rot90(arr, turns))


def _tiff_orientation(im: Image.Image) -> int:
    """The orientation tag (274) of a TIFF as stored, 1 for any other format or no tag."""
    if im.format != "TIFF":
        return 1
    value = getattr(im, "tag_v2", {}).get(_EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _read_oriented_tiff(im: Image.Image, path: Path, orientation: str, exact: bool = False) -> np.ndarray:
    """A TIFF with an orientation tag other than 1: its stored pixels (tifffile), turned as the
    tag says for ``orientation="exif"``. PIL applies the tag itself after decoding, and turned
    an uncompressed grey image's rows into columns (a garbled picture of the right size); its
    header size is already the shown one. A compressed file tifffile cannot decode (LZW or JPEG
    without the imagecodecs package) is decoded by libtiff through PIL, which turns it right (every
    orientation, grey and colour), and turned back for ``orientation="stored"``; ``exact`` (masks)
    refuses a 16-bit colour one, which PIL gives at 8 bits."""
    import tifffile

    if im.mode == "P":
        raise DataError(path, "a palette TIFF with an orientation tag: save it as RGB, or without the tag")
    photometric = getattr(im, "tag_v2", {}).get(262)
    jpeg_ycbcr = photometric == 6 and getattr(im, "tag_v2", {}).get(259) == 7  # decoded to RGB by the codec
    if photometric not in (None, 1, 2) and not jpeg_ycbcr:  # stored numbers: CMYK read as cyan, min-is-white inverted
        raise DataError(path, f"a TIFF with orientation tag {_tiff_orientation(im)} and photometric "
                              f"interpretation {photometric} (not grey or RGB): save it as RGB, or without the tag")
    code = _tiff_orientation(im)
    try:
        arr = _first_page(path)
    except Exception as e:  # noqa: BLE001 - e.g. a compression tifffile cannot decode without imagecodecs
        if _tiff_tag(im, 259) in (None, 1):  # uncompressed: PIL's own decoder turns grey ones wrongly
            raise DataError(path, f"a TIFF with orientation tag {code} that tifffile cannot decode ({e}); PIL would "
                                  "turn it wrongly: save it without the tag") from None
        wide = _sixteen_bit_colour(im)  # PIL's 8 bits of it
        unsigned32 = im.mode == "I" and _tiff_tag(im, 258) == 32 and _tiff_tag(im, 339) in (None, 1)
        if (wide and exact) or unsigned32:  # labels' high byte; PIL reads it signed (wrapped)
            raise _undecodable(im, path, e) from None
        im.load()  # libtiff decodes it; PIL turns it as the tag says
        arr = np.array(im)
        if wide:
            warnings.warn(f"{path}: tifffile cannot decode this 16-bit colour TIFF ({e}); read at 8 bits by PIL "
                          "(install imagecodecs to keep its precision)", stacklevel=3)
            arr = arr.astype(np.uint16) * 257
        return arr if orientation == "exif" else _undo_orientation(arr, {6: 8, 8: 6}.get(code, code))  # back
    return arr if orientation != "exif" else _undo_orientation(arr, code)


def _undecodable(im: Image.Image, path: Path, e: Exception) -> DataError:
    """The error for a TIFF tifffile could not decode (``e``): a compression that needs the optional
    imagecodecs package is said so (it is not a corrupt file)."""
    if "imagecodecs" in str(e):
        return DataError(path, f"its compression ({im.info.get('compression', _tiff_tag(im, 259))}) needs the "
                               "optional imagecodecs package: pip install imagecodecs, or save it uncompressed")
    return DataError(path, f"corrupt or truncated image ({e})")


def _existing_file(path: str | Path) -> Path:
    """``path`` as a Path; DataError naming it when it is missing or not a regular file."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a folder, not an image file")
    if not path.is_file():
        raise DataError(path, "image file not found")
    return path


def full_scale(image: np.ndarray) -> float:
    """The value that stands for full brightness in an image's data: 255 for uint8; for wider
    integers the smallest usual sensor range that holds the largest value (8, 10, 12, 14, 16 or 32
    bits), so that 12-bit data in a 16-bit file reads as bright as it is; for floats 1 when the
    values lie in 0..1.5 (a little overshoot from rounding or sharpening) or 99.5 % of them in 0..1
    (a few hot pixels, clipped), else the smallest of
    those ranges that holds them (an 8-bit image stored as floats: 255; it read as 255 times too
    bright, and the polarity of a fluorescence image turned over). Every reader and every polarity
    decision scales by it.

    Parameters
    ----------
    image : the image array.
    """
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return 255.0
    if np.issubdtype(a.dtype, np.floating):
        finite = a[np.isfinite(a)]
        hi = float(finite.max()) if finite.size else 1.0
        if hi <= 1.5 or (finite.size >= 100 and float(np.percentile(finite, 99.5)) <= 1.0):
            return 1.0  # 0..1 data, a few hot pixels clipped (one of 1.6 made every other pixel read 255x darker)
        return _sensor_range(hi)
    if not np.issubdtype(a.dtype, np.integer):
        return 1.0
    return _sensor_range(max(int(a.max()), 1) if a.size else 1)


def _sensor_range(hi: float) -> float:
    """The smallest usual sensor range (8, 10, 12, 14, 16, 32 or 64 bits) that holds ``hi``."""
    return float(next((2.0 ** b - 1 for b in (8, 10, 12, 14, 16, 32, 64) if hi <= 2.0 ** b - 1), hi))


def to_rgb8(arr: np.ndarray, where="image", *, bits: int | None = None) -> tuple[np.ndarray, int]:
    """Convert grey / RGBA / 16-bit / float arrays to RGB uint8.

    Integer images wider than 8 bits are scaled linearly from ``0..2 ** bits - 1`` when ``bits``
    is given (values above are clipped, with a warning), otherwise from the smallest usual sensor
    range that holds their values (10, 12, 14 or 16 bits, so 12-bit microscopy stays bright; a
    warning says once that the range is guessed per image, see the module docstring); float
    images from 0..1 when their values lie there (up to 1.5, or 99.5 % of them; clipped), otherwise from the smallest of those ranges
    (8 bits first) that holds them. Negative values and NaN become 0. Returns the RGB image and
    the original bit depth.

    Parameters
    ----------
    arr : ``(H, W)``, ``(H, W, 1)``, ``(H, W, 2)`` (grey + alpha), ``(H, W, 3)`` or ``(H, W, 4)``
        array of bool, integers or floats.
    where : the file (or name) given to :class:`DataError` for an unusable array.
    bits : the bits per value the camera used (e.g. 12 for 12-bit data in a 16-bit file), for
        integer images wider than 8 bits; None: guessed per image.

    Returns
    -------
    image : ``(H, W, 3)`` uint8
    depth : original bit depth (1 for bool, 8, 16..., 32 for floats).
    """
    bits = check_bits(bits)
    a = np.asarray(arr)
    if a.size == 0 or a.ndim < 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise DataError(where, f"image has zero size {a.shape}")
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]  # drop alpha
    elif a.ndim == 3 and a.shape[2] == 2:
        a = a[..., 0]  # grey + alpha
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise DataError(where, f"unsupported image shape {arr.shape}")
    if a.dtype == np.bool_:
        a, depth = a.astype(np.uint8) * 255, 1
    elif a.dtype == np.uint8:
        depth = 8
    elif np.issubdtype(a.dtype, np.integer):
        depth = a.dtype.itemsize * 8
        full = _integer_range(a, bits, where)
        a = (np.clip(a, 0, full).astype(np.float64) * (255.0 / full) + 0.5).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        depth = 32
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        # 0..1 data as it is (a little overshoot from rounding or sharpening clipped); larger
        # values from the integer range that holds them (0..255 for an 8-bit image stored as
        # floats), so a float image is never clipped to white
        full = full_scale(a)
        a = (np.clip(a, 0, full) * (255.0 / full) + 0.5).astype(np.uint8)
    else:
        raise DataError(where, f"unsupported image dtype {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a), depth


def read_image(path: str | Path, *, orientation: str = "exif", bits: int | None = None) -> tuple[np.ndarray, int]:
    """Read ``path`` as RGB uint8, as shown (EXIF orientation applied) unless
    ``orientation="stored"``. Returns ``(image, original_bit_depth)``.

    Parameters
    ----------
    path : the image file.
    orientation : ``"exif"`` (as shown) or ``"stored"``; see the module docstring.
    bits : the camera's bits per value for data wider than 8 bits (12 for a 12-bit camera);
        None: the range the file declares (DICOM ``BitsStored``, PNG ``sBIT``), else guessed per
        image (see "Intensity scale" in the module docstring).

    Raises
    ------
    DataError
        naming the file when it is missing, corrupt, truncated or of an unsupported layout.
    """
    raw = read_raw(path, orientation=orientation)
    if bits is None and np.issubdtype(raw.dtype, np.integer) and raw.dtype.itemsize > 1:
        bits = declared_bits(path)
        colour = raw[..., :-1] if raw.ndim == 3 and raw.shape[2] in (2, 4) else raw  # an opaque alpha is 65535
        if bits is not None and colour.size and _scaled_up(colour, bits, Path(path)):
            # a PNG's sBIT names the camera's bits, its samples scaled up to the full range (the
            # PNG specification; ImageMagick and pypng write them so): the file's whole range
            bits = 16 if int(colour.max()) <= 65535 else raw.dtype.itemsize * 8
    if raw.ndim == 3 and raw.shape[2] in (2, 4) and "alpha" not in _SAID_ONCE:
        alpha = raw[..., -1]
        if np.issubdtype(alpha.dtype, np.integer) and int(alpha.min()) < np.iinfo(alpha.dtype).max:
            _SAID_ONCE.add("alpha")  # once: a folder of cut-out cells would say it for every file
            warnings.warn(f"{path}: transparent pixels are read as the colour stored under them (alpha is "
                          "dropped, not blended onto a background); a cut-out cell on a transparent background "
                          "reads as on that colour, often black", stacklevel=2)
    return to_rgb8(raw, where=path, bits=bits)


def _scaled_up(a: np.ndarray, bits: int, path: Path) -> bool:
    """Whether the samples ``a`` of a file declaring ``bits`` significant bits were scaled up to
    the full 16-bit range, as the PNG specification has a PNG's ``sBIT`` samples, rather than
    stored as the camera gave them: some value lies above ``bits``, or (a dim frame) every value
    is one that the specification's scalings give (a left shift, with the high bits repeated in
    the low ones or not, or linear), so a dim and a bright frame of one camera read alike."""
    top = (1 << bits) - 1
    if int(a.max()) > top:
        return True
    if a.dtype != np.uint16 or bits >= 16 or path.suffix.lower() in DICOM_EXTENSIONS:
        return False  # DICOM's BitsStored values are stored as they are
    v = (a >> (16 - bits)).astype(np.uint32)
    shifted = v << (16 - bits)
    repeated, pos = shifted.copy(), 16 - bits
    while pos > 0:
        pos -= bits
        repeated |= (v << pos) if pos >= 0 else (v >> -pos)
    linear = (v * 65535 + top // 2) // top
    return any(np.array_equal(a, scaled) for scaled in (shifted, repeated, linear))


def check_bits(bits) -> int | None:
    """``bits`` as an int in 1..32, or None (ValueError otherwise).

    Parameters
    ----------
    bits : the bits per value a camera used, or None.
    """
    if bits is None:
        return None
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= 32:
        raise ValueError(f"bits (sensor_bits) must be a whole number of bits in 1..32, e.g. 12, got {bits!r}")
    return int(bits)


def declared_bits(path: str | Path) -> int | None:
    """The bits per value an image file declares for its data: DICOM ``BitsStored``, or the
    significant bits of a PNG's ``sBIT`` chunk (the largest of its colour channels); None when
    it declares none. Read once per file version (images are read again every epoch).

    Parameters
    ----------
    path : the image file.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return None
    return _declared_bits(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4096)
def _declared_bits(name: str, _mtime_ns: int, _size: int) -> int | None:
    """:func:`declared_bits` of the file ``name`` as it is at that modification time and size."""
    path = Path(name)
    try:
        if path.suffix.lower() in DICOM_EXTENSIONS:
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if getattr(ds, "PhotometricInterpretation", "") == "PALETTE COLOR":
                return 16  # the colours' range (a 16-bit lookup table spans it; an 8-bit one gives uint8)
            return int(ds.BitsStored) or None
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            colours = 1
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return None
                n, kind = struct.unpack(">I4s", head)
                if kind == b"IHDR":
                    ihdr = f.read(n)
                    colours = 3 if len(ihdr) > 9 and ihdr[9] in (2, 3, 6) else 1
                    f.seek(4, 1)
                elif kind == b"sBIT":
                    data = f.read(n)[:colours]
                    return int(max(data)) if data and 0 < max(data) <= 16 else None
                elif kind in (b"IDAT", b"IEND"):
                    return None
                else:
                    f.seek(n + 4, 1)
    except Exception:  # noqa: BLE001 - no declaration to be read: the per-image range
        return None


#: what was said once per process (a guessed range, values over a given range, transparent
#: pixels, a 16-bit colour PNG's lost levels): images are read every epoch
_SAID_ONCE: set = set()


def _integer_range(a: np.ndarray, bits: int | None, where) -> float:
    """The value that stands for full brightness in the integer image ``a`` (see :func:`to_rgb8`)."""
    if bits is not None:
        top = float(2 ** bits - 1)
        hi = int(a.max()) if a.size else 0
        if hi > top and ("over", bits) not in _SAID_ONCE:
            _SAID_ONCE.add(("over", bits))
            warnings.warn(f"{where}: values up to {hi}, above the {bits}-bit range ({int(top)}) declared for it; "
                          "they are clipped to white (is the bit depth right?)", stacklevel=4)
        return top
    full = full_scale(a)
    dtype_top = float(np.iinfo(a.dtype).max) if a.dtype.kind == "u" else float(2 ** (a.dtype.itemsize * 8 - 1) - 1)
    guessed = int(round(np.log2(full + 1)))
    if full < dtype_top and guessed not in _SAID_ONCE:
        _SAID_ONCE.add(guessed)
        warnings.warn(f"{where}: {a.dtype} data scaled from the {guessed}-bit range its largest value fits, "
                      "guessed per image: frames of one camera at other exposures may be scaled differently. "
                      "Give the camera's bit depth (open_dataset(..., sensor_bits=12), read_image(..., bits=12)) "
                      "to scale every image alike", stacklevel=4)
    return full


def image_info(path: str | Path) -> ImageInfo:
    """The stored size and EXIF orientation of an image file, from its header (no pixels decoded).

    Parameters
    ----------
    path : the image file (a DICOM file is decoded to get its size).

    Raises
    ------
    DataError
        naming the file when it is missing or not a readable image.
    """
    path = _existing_file(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return ImageInfo(to_rgb8(_read_dicom(path), where=path, bits=declared_bits(path))[0].shape[:2])
    try:
        with warnings.catch_warnings():  # the same size limit as reading the pixels (one rule, not two)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            w, h = im.size
            orientation = _exif_orientation(im)
            if _tiff_orientation(im) != 1:  # PIL's size of an oriented TIFF is the shown one: the stored
                w, h = int(im.tag_v2[256]), int(im.tag_v2[257])  # one is in the header's width and length
                orientation = _tiff_orientation(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(path, f"not a readable image: {e}{_bomb_hint(e)}") from None
    return ImageInfo((h, w), orientation)


def _bomb_hint(e: Exception) -> str:
    """How to read a scan larger than PIL's limit, for the error PIL gives it."""
    if isinstance(e, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
        return (f" (PIL refuses images of more than {Image.MAX_IMAGE_PIXELS} pixels; for a larger scan you "
                "trust, raise PIL.Image.MAX_IMAGE_PIXELS)")
    return ""


def image_size(path: str | Path, *, orientation: str = "exif") -> tuple[int, int]:
    """``(height, width)`` of an image file as read in ``orientation`` (as shown by default),
    from its header, without decoding the pixels.

    Parameters
    ----------
    path : the image file.
    orientation : ``"exif"`` (as shown) or ``"stored"``.

    Raises
    ------
    DataError
        naming the file when it is missing or not a readable image.
    """
    return image_info(path).hw(orientation)


def read_mask(path: str | Path, *, orientation: str = "exif") -> np.ndarray:
    """Read a mask image as a 2-D integer array of its values (see the module docstring):
    palette indices, the grey level, or one integer per colour of a colour mask.

    Parameters
    ----------
    path : the mask image file.
    orientation : ``"exif"`` (as shown) or ``"stored"``; use that of the image it annotates.

    Returns
    -------
    np.ndarray
        ``(H, W)`` integer array.
    """
    a = read_raw(path, orientation=orientation, palette="index")
    if a.ndim == 3 and a.shape[2] == 4:
        alpha, a = a[..., 3], a[..., :3]
        if alpha.size and int(alpha.min()) < np.iinfo(alpha.dtype).max:  # some pixels transparent
            if (a == a.reshape(-1, 3)[0]).all():  # one colour: the mask is drawn in the alpha channel
                return (alpha > 0).astype(np.uint8)
            a = np.where(alpha[..., None] > 0, a, 0)  # transparent pixels are background, whatever colour lies under them
    if a.ndim == 3:
        a = a[..., :3] if a.shape[2] in (3, 4) else a[..., :1]
        if a.shape[2] == 1 or (np.all(a[..., 0] == a[..., 1]) and np.all(a[..., 0] == a[..., 2])):
            a = a[..., 0]
        elif a.dtype == np.uint8:
            a = (a[..., 0].astype(np.uint32) << 16) | (a[..., 1].astype(np.uint32) << 8) | a[..., 2]
        else:
            raise DataError(path, f"colour mask of dtype {a.dtype} with differing channels: "
                                  "save it as a grey, palette or 8-bit colour image")
    return a


def read_binary_mask(path: str | Path, *, orientation: str = "exif") -> np.ndarray:
    """Read a mask file as a 2-D bool array (any non-zero value is foreground: a palette
    index, a grey level or a colour).

    Parameters
    ----------
    path : the mask image file.
    orientation : ``"exif"`` (as shown) or ``"stored"``; use that of the image it annotates.

    Raises
    ------
    DataError
        naming the file when it is unreadable or not an integer (or bool) image.
    """
    m = read_mask(path, orientation=orientation)
    if not (m.dtype == np.bool_ or np.issubdtype(m.dtype, np.integer)):
        raise DataError(path, f"mask must be an integer image, got dtype {m.dtype}")
    first = _palette_first_colour(Path(path))
    if first not in (None, (0, 0, 0)):  # e.g. quantize(2) of a black and white mask: [white, black]
        raise DataError(path, f"palette mask whose index 0 is not black but {first}: which value is the object "
                              "cannot be told (with an inverted palette index 0 is the object); save it as grey "
                              "or with index 0 black")
    return m > 0


def _palette_first_colour(path: Path) -> tuple[int, ...] | None:
    """The RGB colour of index 0 of a palette image file, None for any other image."""
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return None
    with Image.open(path) as im:
        if im.mode != "P":
            return None
        return tuple((im.getpalette() or [])[:3]) or None


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError:
        raise DataError(path, "reading DICOM needs the optional extra: pip install 'smearlab[dicom]'") from None
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for bad files
        raise DataError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from None
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:  # multi-frame: take the first frame
        arr = arr[0]
    photometric = str(getattr(ds, "PhotometricInterpretation", "") or "MONOCHROME2")
    if photometric not in _DICOM_PHOTOMETRIC:
        raise DataError(path, f"DICOM photometric interpretation {photometric!r} is not read (only "
                              f"{', '.join(_DICOM_PHOTOMETRIC)}): convert it to RGB or MONOCHROME2")
    if photometric == "PALETTE COLOR":  # the pixels are indices into the colour lookup tables
        try:
            from pydicom.pixels import apply_color_lut
        except ImportError:  # pydicom 2
            from pydicom.pixel_data_handlers.util import apply_color_lut
        try:
            return apply_color_lut(arr, ds)
        except Exception as e:  # noqa: BLE001 - missing or malformed lookup tables
            raise DataError(path, f"a PALETTE COLOR DICOM whose colour lookup table cannot be applied "
                                  f"({type(e).__name__}: {e})") from None
    if photometric == "MONOCHROME2" and np.issubdtype(arr.dtype, np.signedinteger):
        # the signed range onto 0..2^bits - 1 (-2048..2047 of 12-bit data onto 0..4095): clipped at 0, every
        # value below it read black
        bits = int(getattr(ds, "BitsStored", 0) or arr.dtype.itemsize * 8)
        half = 1 << (bits - 1)
        arr = (np.clip(arr.astype(np.int64), -half, half - 1) + half).astype(np.uint16 if bits <= 16 else np.uint32)
    if photometric == "MONOCHROME1":
        # white is the smallest value: turn it over within the stored bit range (12-bit data
        # 0..4095), not within this image's own values, so every file of a set reads alike
        bits = int(getattr(ds, "BitsStored", 0) or arr.dtype.itemsize * 8)
        if np.issubdtype(arr.dtype, np.signedinteger):  # the signed range onto 0..2^bits - 1, reversed
            top = (1 << (bits - 1)) - 1                  # (turned over in place it went negative: black)
            arr = (top - np.clip(arr.astype(np.int64), -top - 1, top)).astype(np.uint16 if bits <= 16 else np.uint32)
        else:
            arr = (np.asarray((1 << bits) - 1, arr.dtype) - np.minimum(arr, (1 << bits) - 1)).astype(arr.dtype)
    return arr


#: the DICOM photometric interpretations read: grey, RGB (pydicom turns YBR_FULL and YBR_FULL_422
#: into RGB, and a JPEG 2000 codec YBR_ICT and YBR_RCT), and palette colour (its lookup table applied)
_DICOM_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT",
                      "PALETTE COLOR")


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an image atomically (temporary name, then rename).

    Parameters
    ----------
    path : the file; its suffix chooses the format (JPEG, PNG, BMP, TIFF; PNG otherwise).
    image : array PIL can save, typically ``(H, W, 3)`` uint8 RGB or an ``(H, W)`` mask.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=_pil_format(path))


def _pil_format(path: Path) -> str:
    ext = path.suffix.lower()
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP",
            ".tif": "TIFF", ".tiff": "TIFF"}.get(ext, "PNG")
