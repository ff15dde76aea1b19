"""Reading images of any common mode into RGB uint8, with clear errors for bad files."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

#: ITU-R BT.601 luma weights (the ones PIL uses for "L"), shared by every grey conversion.
LUMA = (0.299, 0.587, 0.114)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
DICOM_EXTENSIONS = {".dcm", ".dicom"}


def is_image_file(path: Path) -> bool:
    """True for the image extensions smearlab reads (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS | DICOM_EXTENSIONS


def read_raw(path: str | Path) -> np.ndarray:
    """The image array as stored: original dtype and channels (PIL or pydicom)."""
    path = _existing_file(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return _read_dicom(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("I;16", "I;16B", "I;16L"):
                    return np.array(im, dtype=np.uint16)
                elif im.mode == "I":
                    return np.array(im, dtype=np.int32)
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "LA", "PA"):
                    im = im.convert("RGBA" if im.mode in ("LA", "PA") else "RGB")
                return np.array(im)
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise DataError(path, f"not a readable image ({type(e).__name__}: {e})") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise DataError(path, f"corrupt or truncated image ({e})") from None


def _existing_file(path: str | Path) -> Path:
    """``path`` as a Path; DataError naming it when it is missing or not a regular file."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a folder, not an image file")
    if not path.is_file():
        raise DataError(path, "image file not found")
    return path


def to_rgb8(arr: np.ndarray, where="image") -> tuple[np.ndarray, int]:
    """Convert grey / RGBA / 16-bit / float arrays to RGB uint8.

    Integer images wider than 8 bits are scaled linearly from the smallest usual sensor range
    that holds their values (10, 12, 14 or 16 bits, so 12-bit microscopy stays bright); float
    images from 0..1. Returns the RGB image and the original bit depth.
    """
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
        hi = max(int(a.max()), 1)
        # scale from the smallest usual sensor range that holds the data (12-bit stays bright)
        full = next(2 ** b - 1 for b in (8, 10, 12, 14, 16, 32) if hi <= 2 ** b - 1)
        a = (np.clip(a, 0, None).astype(np.float64) * (255.0 / full) + 0.5).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        depth = 32
        a = (np.clip(np.nan_to_num(a), 0, 1) * 255 + 0.5).astype(np.uint8)
    else:
        raise DataError(where, f"unsupported image dtype {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a), depth


def read_image(path: str | Path) -> tuple[np.ndarray, int]:
    """Read ``path`` as RGB uint8. Returns ``(image, original_bit_depth)``.

    Raises
    ------
    DataError
        naming the file when it is missing, corrupt, truncated or of an unsupported layout.
    """
    return to_rgb8(read_raw(path), where=path)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header, without decoding the pixels.

    Raises
    ------
    DataError
        naming the file when it is missing or not a readable image.
    """
    path = _existing_file(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(path, f"not a readable image ({e})") from None
    return h, w


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask image as a 2-D integer array (first channel of colour masks)."""
    a = read_raw(path)
    if a.ndim == 3:
        a = a[..., 0]
    return a


def read_binary_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as a 2-D bool array (any non-zero pixel is foreground).

    Raises
    ------
    DataError
        naming the file when it is unreadable or not an integer (or bool) image.
    """
    m = read_mask(path)
    if not (m.dtype == np.bool_ or np.issubdtype(m.dtype, np.integer)):
        raise DataError(path, f"mask must be an integer image, got dtype {m.dtype}")
    return m > 0


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
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        arr = arr.max() - arr
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):  # multi-frame: take the first frame
        arr = arr[0]
    return arr


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an image atomically (temporary name, then rename)."""
    from ..io import atomic_path
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=_pil_format(path))


def _pil_format(path: Path) -> str:
    ext = path.suffix.lower()
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP",
            ".tif": "TIFF", ".tiff": "TIFF"}.get(ext, "PNG")
