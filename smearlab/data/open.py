"""``open_dataset``: the one name notebooks use for "the data this run is about"."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from ..core.errors import DataError
from . import synthetic
from .formats import load
from .sample import SmearDataset

log = logging.getLogger("smearlab.data")

#: Images per staining domain of the synthetic default.
SYNTHETIC_SIZES = {True: 24, False: 200}
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".zip")


def open_dataset(spec: str | Path = "synthetic", *, quick: bool = True, seed: int = 0,
                 format: str | None = None, **options) -> SmearDataset:
    """Open a dataset by name or path.

    Parameters
    ----------
    spec : ``"synthetic"`` (both staining domains, A and B), ``"synthetic-A"`` / ``"synthetic-B"``
        (one domain), a path to a dataset in any supported on-disk format, or an archive
        (``.tar.xz``, ``.zip``, ...) of one, which is extracted once into the cache folder
        (see :func:`extract`).
    quick : for synthetic data, make a small set (24 images per domain instead of 200).
    seed : seed of the synthetic generator.
    format : name the on-disk format instead of detecting it.
    options : passed to the synthetic generator or the format's loader.
    """

    spec = str(spec)
    keywords = ["synthetic", *(f"synthetic-{k}" for k in synthetic.STAINS)]
    if spec in keywords:  # exactly: a folder named "synthetic_cells" is a folder
        if Path(spec).exists():
            log.warning("%r names the synthetic generator; to load the folder of that name, give ./%s", spec, spec)
        if format is not None or "split" in options or "sensor_bits" in options:
            raise ValueError(f"{spec!r} is the synthetic generator: format, split and sensor_bits name files on disk")
        n = options.pop("n", SYNTHETIC_SIZES[bool(quick)])
        stains = ["A", "B"] if spec == "synthetic" else [spec.split("-", 1)[1]]
        parts = [synthetic.make_dataset(n, seed=seed + i, stain=st, **options) for i, st in enumerate(stains)]
        return parts[0] if len(parts) == 1 else SmearDataset.concat(parts, name="synthetic")
    path = Path(spec)
    if path.is_file() and spec.lower().endswith(ARCHIVE_SUFFIXES):
        archive = path.name[:-len(next(x for x in ARCHIVE_SUFFIXES if path.name.lower().endswith(x)))]
        path = extract(path)
        inside = [c for c in path.iterdir() if not c.name.startswith(".")]
        if len(inside) == 1 and inside[0].is_dir():  # archive of one top-level folder
            path = inside[0]
        else:  # named after the archive, not the cache folder (whose name changes with the archive's date)
            options.setdefault("name", archive)
    return load(path, format=format, **options)


def cache_dir() -> Path:
    """Where smearlab keeps extracted archives: ``$SMEARLAB_CACHE`` or ``~/.cache/smearlab``."""
    return Path(os.environ.get("SMEARLAB_CACHE", Path.home() / ".cache" / "smearlab"))


def extract(archive: str | Path, into: str | Path | None = None) -> Path:
    """Extract a dataset archive once and return the folder.

    The folder name carries a hash of the archive's path, size and modification time, so a
    changed archive is extracted again. Members that would land outside the folder (absolute
    paths, ``..``, links pointing out, device files) are refused with a :class:`DataError`
    naming the archive and the member, and nothing is kept. Extraction goes to a temporary
    folder of its own that is renamed when complete, so an interrupted run leaves no
    half-extracted dataset and two processes extracting the same archive at once (parallel
    sweep jobs) do not disturb each other.

    Parameters
    ----------
    archive : the archive file (``.tar.xz``, ``.zip``, ...).
    into : the folder to extract into (None: a folder named after the archive under
        ``cache_dir() / "extracted"``).

    Returns
    -------
    Path
        the folder holding the extracted files.
    """
    archive = Path(archive)
    try:
        st = archive.stat()
    except OSError as e:
        raise DataError(archive, f"cannot read the archive ({e.strerror or e})") from None
    key = hashlib.sha1(f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    name = archive.name
    for suf in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    target = Path(into) if into is not None else cache_dir() / "extracted" / f"{name}-{key}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        _extract_into(archive, tmp)
        tmp.rename(target)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, DataError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if target.is_dir():  # another process finished the same extraction first
            return target
        if isinstance(e, DataError):
            raise
        raise DataError(archive, f"cannot extract the archive ({type(e).__name__}: {e})") from None
    return target


def _extract_into(archive: Path, dest: Path) -> None:
    """Extract ``archive`` (zip or any tar) into the empty folder ``dest``, refusing unsafe members."""
    if archive.suffix.lower() == ".zip":
        with zipfile.ZipFile(archive) as zf:
            for m in zf.namelist():
                if not _inside(dest, m):
                    raise DataError(archive, f"archive member escapes the folder (refused): {m}")
            zf.extractall(dest)  # zipfile creates no links
        return
    with tarfile.open(archive) as tf:
        if hasattr(tarfile, "data_filter"):  # Python 3.12, and 3.8.17 / 3.9.17 / 3.10.12 / 3.11.4 on
            try:
                tf.extractall(dest, filter="data")
            except tarfile.FilterError as e:
                raise DataError(archive, f"unsafe archive member refused: {e}") from None
            return
        for m in tf.getmembers():
            problem = _unsafe_tar_member(m, dest)
            if problem:
                raise DataError(archive, f"unsafe archive member refused: {m.name!r} {problem}")
        tf.extractall(dest)


def _inside(dest: Path, name: str) -> bool:
    """Whether ``dest/name`` stays inside ``dest`` (absolute names and ``..`` do not)."""
    return (dest / name).resolve().is_relative_to(dest.resolve())


def _unsafe_tar_member(m: tarfile.TarInfo, dest: Path) -> str | None:
    """Why a tar member may not be extracted into ``dest`` (for Pythons without tar filters)."""
    if not _inside(dest, m.name):
        return "would be written outside the folder"
    if m.issym() and not _inside(dest, str(Path(m.name).parent / m.linkname)):
        return f"is a link pointing outside the folder ({m.linkname})"
    if m.islnk() and not _inside(dest, m.linkname):
        return f"is a hard link to a file outside the folder ({m.linkname})"
    if m.isdev():
        return "is a device file"
    return None
