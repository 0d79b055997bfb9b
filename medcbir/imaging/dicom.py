"""Read one DICOM file into items (one per frame), in modality units.

The rules, in order (each one is what a DICOM viewer does before display):

1. **Decode** with pydicom's pixel backend, which uses pylibjpeg (libjpeg, openjpeg, rle)
   and python-gdcm for compressed transfer syntaxes. YBR_FULL / YBR_FULL_422 are converted
   to RGB by pydicom (its default), JPEG 2000 colour comes out as RGB from the codec.
2. **Colour → grayscale**: RGB (and PALETTE COLOR after its palette) becomes ITU-R BT.601 luma
   ``0.299 R + 0.587 G + 0.114 B`` on the stored values (no gamma), as float32.
3. **Modality LUT** for grayscale images: RescaleSlope/Intercept (→ Hounsfield units for CT) or a
   Modality LUT Sequence, via ``pydicom.pixels.apply_modality_lut``; for enhanced multi-frame
   objects the per-frame or shared *Pixel Value Transformation* functional group is used.
4. **VOI** (WindowCenter/Width, per-frame *Frame VOI LUT*, or a VOI LUT table approximated by
   the linear window spanning its input range) is not applied but exposed as ``Item.voi``.
5. **MONOCHROME1** is exposed as ``Item.inverted``; the pixels keep their modality values.

Raw PatientID / PatientName are read here only to compute the keyed pseudonym; they never
leave this module.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from medcbir.imaging.items import Item, ItemMeta, SkipFile
from medcbir.imaging.pseudonym import pseudonym
from medcbir.imaging.sop_classes import derived_detail, not_an_image

#: Refuse to decode a file with more pixels than this (rows × cols × frames × samples); the
#: decoded float32 items of such a file would take ≥ 1 GiB.
MAX_PIXELS = 2**28
#: Refuse to decode a file whose decoding would cost more than this (:func:`decode_cost`), judged
#: from its header before any pixel is decoded.
MAX_DECODE_BYTES = 2**30
#: The work of one frame besides its pixels (its metadata, modality LUT and item), counted as
#: this many bytes of pixels: a file of 300,000 one-pixel frames is not a cheap file.
FRAME_COST_BYTES = 64 * 1024

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: Plugins measured faster than pydicom's default first choice (benchmarks/decode.py): pylibjpeg-rle
#: beats pydicom's pure-Python RLE Lossless decoder (benchmarks/RESULTS.md, "Development measurements").
PREFERRED_PLUGIN = {"1.2.840.10008.1.2.5": "pylibjpeg"}


def read_dicom(
    source: str | Path | BinaryIO,
    *,
    key: bytes | None = None,
    uri: str | None = None,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_DECODE_BYTES,
) -> list[Item]:
    """Decode a DICOM file into one :class:`Item` per frame.

    Args:
        source: a path, a binary file object positioned at the start of the file, or a
            ``pydicom.Dataset`` already read (with its pixel data).
        key: the archive's pseudonym key; without it ``patient_pseudonym`` is ``""``.
        uri: what to record as ``ItemMeta.source`` (default: the path, or the file's name).
        max_pixels: guard against absurd Rows × Columns × frames before anything is decoded.
        max_bytes: the largest :func:`decode_cost` decoded; a costlier file is skipped
            (``too-large``) before anything is decoded.

    Returns:
        The items, frame 0 first.

    Raises:
        SkipFile: the file must be skipped; ``reason`` is one of ``SKIP_REASONS``.
    """
    from pydicom.dataset import Dataset

    if uri is None:
        uri = (str(source) if isinstance(source, (str, Path)) else str(getattr(source, "filename", "") or "")
               if isinstance(source, Dataset) else str(getattr(source, "name", "")))
    with warnings.catch_warnings():
        # pydicom warns about every oddity of real-world files; reasons are reported instead.
        warnings.simplefilter("ignore")
        ds = source if isinstance(source, Dataset) else read_dataset(source)
        try:
            return _items(ds, key=key, uri=uri, max_pixels=max_pixels, max_bytes=max_bytes)
        except SkipFile as exc:
            skip = exc
        except MemoryError:
            skip = SkipFile("too-large", "out of memory while decoding")
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - one bad file must never stop a walk;
            # BaseException because Rust decoders (pyo3) raise PanicException, not an Exception.
            skip = SkipFile("corrupt", f"{exc.__class__.__name__}: {exc}")
        # A decoder's message may quote element values; the patient's identity must not leak
        # into the quarantine log through it.
        raise SkipFile(skip.reason, _redact(skip.detail, ds)) from None


def _redact(text: str, ds) -> str:
    for keyword in ("PatientID", "PatientName", "OtherPatientIDs", "PatientBirthDate"):
        try:
            value = str(ds.get(keyword, "") or "").strip()
        except Exception:  # noqa: BLE001
            continue
        if len(value) >= 2 and value in text:
            text = text.replace(value, "<redacted>")
    return text


# --- reading -------------------------------------------------------------------------------


def read_dataset(source: str | Path | BinaryIO):
    """The pydicom dataset of a DICOM file (pixels not decoded).

    Raises:
        SkipFile: ``not-dicom``, ``truncated`` or ``corrupt``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    if isinstance(source, (str, Path)):
        try:
            f: BinaryIO = open(source, "rb")
        except IsADirectoryError:
            raise SkipFile("not-dicom", "a directory, not a file") from None
        except FileNotFoundError:
            raise SkipFile("not-dicom", "no such file") from None
        except OSError as exc:  # permissions, I/O errors: the file exists but cannot be read
            raise SkipFile("corrupt", f"cannot read: {exc.strerror or exc}") from None
        close = True
    else:
        f, close = source, False
    try:
        head = f.read(132)
        f.seek(0)
        if not head:
            raise SkipFile("not-dicom", "empty file")
        has_preamble = len(head) == 132 and head[128:132] == b"DICM"
        if not has_preamble and not _looks_like_bare_dataset(head):
            raise SkipFile("not-dicom", "no DICM preamble and no DICOM element at the start")
        try:
            # force=True for bare datasets (no preamble/meta) such as old ACR-NEMA-style files.
            return pydicom.dcmread(f, force=not has_preamble)
        except InvalidDicomError as exc:
            raise SkipFile("not-dicom", str(exc)) from None
        except (EOFError, OSError) as exc:
            raise SkipFile("truncated", f"{exc.__class__.__name__}: {exc}") from None
        except Exception as exc:  # noqa: BLE001
            reason = "truncated" if _says_truncated(exc) else "corrupt"
            raise SkipFile(reason, f"while reading: {exc.__class__.__name__}: {exc}") from None
    finally:
        if close:
            f.close()


def _looks_like_bare_dataset(head: bytes) -> bool:
    """A dataset without preamble starts with a group 0002 or 0008 element (either endianness)."""
    if len(head) < 8:
        return False
    group_le = int.from_bytes(head[0:2], "little")
    group_be = int.from_bytes(head[0:2], "big")
    return group_le in (0x0002, 0x0008) or group_be in (0x0002, 0x0008)


def _says_unsupported(text: str) -> bool:
    text = text.lower()
    return any(w in text for w in ("not support", "unsupported", "no plugin", "missing", "no decoding plugin", "not available"))


def _says_truncated(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(w in text for w in ("truncat", "eof", "end of file", "not enough", "premature", "shorter than"))


# --- decoding ------------------------------------------------------------------------------


def decode_cost(ds, frames: int | None = None) -> int:
    """What decoding the first ``frames`` frames (default: all) of ``ds`` costs, in bytes, from
    its header alone: the decoder's output (rows × columns × samples × BitsAllocated), the
    float32 items made of it (rows × columns × 4), :data:`FRAME_COST_BYTES` per frame, and the
    compressed pixel data the decoder reads."""
    rows, cols = max(0, _int(ds, "Rows", 0)), max(0, _int(ds, "Columns", 0))
    count = max(1, _int(ds, "NumberOfFrames", 1))
    count = min(count, max(1, frames)) if frames is not None else count
    samples = max(1, _int(ds, "SamplesPerPixel", 1))
    per_sample = max(1, (_int(ds, "BitsAllocated", 16) + 7) // 8)
    pixels = rows * cols * count
    compressed = 0
    try:
        element = ds["PixelData"] if "PixelData" in ds else None
        if element is not None and element.is_undefined_length:  # encapsulated: compressed frames
            compressed = len(element.value or b"")
    except Exception:  # noqa: BLE001 - an unreadable element costs nothing to skip
        compressed = 0
    return pixels * samples * per_sample + pixels * 4 + count * FRAME_COST_BYTES + compressed


def check_decode_cost(ds, max_bytes: int, frames: int | None = None) -> None:
    """:class:`SkipFile` (``too-large``) when :func:`decode_cost` exceeds ``max_bytes``."""
    cost = decode_cost(ds, frames)
    if cost > max_bytes:
        rows, cols, count = _int(ds, "Rows", 0), _int(ds, "Columns", 0), max(1, _int(ds, "NumberOfFrames", 1))
        shape = f"{rows}x{cols}" + (f", {count} frames" if count > 1 and frames is None else "")
        raise SkipFile("too-large", f"decoding {shape} would cost about {cost / 2**20:.0f} MiB; the limit is {max_bytes / 2**20:.0f} MiB")


def _items(ds, *, key: bytes | None, uri: str, max_pixels: int, max_bytes: int = MAX_DECODE_BYTES) -> list[Item]:
    from pydicom.pixels import get_decoder
    from pydicom.pixels.utils import as_pixel_options

    meta_sop_class = str(_get(getattr(ds, "file_meta", None) or {}, "MediaStorageSOPClassUID", ""))
    if meta_sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise SkipFile("dicomdir", "DICOMDIR (a directory of the media, not an image)")
    derived = derived_detail(ds)
    if derived is not None:
        raise SkipFile("derived-by-medcbir", derived)
    not_image = not_an_image(ds)
    if not_image is not None:
        raise SkipFile("not-an-image", not_image)
    if not any(k in ds for k in PIXEL_KEYWORDS):
        sop_class = _get(ds, "SOPClassUID", None)
        name = str(getattr(sop_class, "name", "") or sop_class or "unknown SOP class")
        if name.endswith("Image Storage"):
            # An image object whose pixels are missing: the file was cut before them (pydicom
            # stops quietly at a short element) or they were stripped. Either way not an SR.
            raise SkipFile("truncated", f"{name} without pixel data (file cut short or pixels stripped)")
        raise SkipFile("no-pixel-data", f"{_get(ds, 'Modality', '') or '?'} {name}".strip())

    tsyntax = _transfer_syntax(ds)
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    frames = max(1, _int(ds, "NumberOfFrames", 1))
    samples = max(1, _int(ds, "SamplesPerPixel", 1))
    if rows <= 0 or cols <= 0:
        raise SkipFile("unsupported-image", f"Rows={rows} Columns={cols}")
    n_pixels = rows * cols * frames * samples
    if n_pixels > max_pixels:
        raise SkipFile("too-large", f"{rows}x{cols}x{frames} frames x{samples} samples > {max_pixels} pixels")
    check_decode_cost(ds, max_bytes)
    photometric = str(_get(ds, "PhotometricInterpretation", "")).strip().upper()
    if samples == 1 and photometric not in (*GRAYSCALE, "PALETTE COLOR"):
        raise SkipFile("unsupported-image", f"photometric interpretation {photometric!r} with 1 sample")
    if samples == 3 and not (photometric == "RGB" or photometric.startswith("YBR")):
        raise SkipFile("unsupported-image", f"photometric interpretation {photometric!r} with 3 samples")
    if samples not in (1, 3):
        raise SkipFile("unsupported-image", f"SamplesPerPixel={samples}")

    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise SkipFile("undecodable-syntax", f"no decoder for transfer syntax {tsyntax}") from None
    if not decoder.is_available:
        raise SkipFile("undecodable-syntax", f"no installed plugin decodes {getattr(tsyntax, 'name', tsyntax)} ({tsyntax})")
    _check_native_length(ds, tsyntax, rows, cols, frames, samples, photometric)

    try:
        arr, pixel_meta = _decode(decoder, ds, str(tsyntax), as_pixel_options(ds))
    except (NotImplementedError, RuntimeError) as exc:
        # "no plugin can do this" is the syntax's fault; "every plugin choked on the data" is
        # the file's.
        text = str(exc)
        if _says_unsupported(text):
            raise SkipFile("undecodable-syntax", text) from None
        raise SkipFile("corrupt", f"decoding: {exc.__class__.__name__}: {text}") from None
    except (EOFError, ValueError, KeyError, IndexError, TypeError, OSError, AttributeError) as exc:
        reason = "truncated" if _says_truncated(exc) else "corrupt"
        raise SkipFile(reason, f"decoding: {exc.__class__.__name__}: {exc}") from None

    arr = np.asarray(arr)
    if frames == 1 and arr.ndim == (3 if samples > 1 else 2):
        arr = arr[None]
    if arr.ndim != (4 if samples > 1 else 3) or arr.shape[0] != frames:
        raise SkipFile("corrupt", f"decoded array shape {arr.shape} does not match {frames} frames of {rows}x{cols}x{samples}")
    out_photometric = str(pixel_meta.get("photometric_interpretation", photometric)).upper()

    base = _base_meta(ds, key=key, uri=uri, tsyntax=str(tsyntax))
    items = []
    for index in range(frames):
        pixels, inverted = _to_modality_units(arr[index], ds, index, out_photometric)
        frame_meta = ItemMeta(
            **base,
            frame=index,
            slice_position=_slice_position(ds, index),
            rows=int(pixels.shape[0]),
            cols=int(pixels.shape[1]),
            pixel_spacing=_pixel_spacing(ds, index),
        )
        voi = _voi(ds, index) if out_photometric in GRAYSCALE else None
        items.append(Item(meta=frame_meta, pixels=pixels, voi=voi, inverted=inverted, plane=_slice_plane(ds, index)))
    return items


#: decoders tried only when no other plugin can decode the syntax: GDCM's C++ code aborts the whole
#: process (an uncaught ``std::string`` throw → ``std::terminate``) on some corrupt JPEG 2000 streams
#: (benchmarks/fuzz.py found one in 10,000 mutated files), and it decodes those syntaxes with the same
#: libraries (OpenJPEG, libjpeg) the pylibjpeg plugins wrap, so a stream they refuse is corrupt.
LAST_RESORT_PLUGINS = ("gdcm",)


def decode_plugins(available, tsyntax: str) -> list[str]:
    """The order plugins are tried in for ``tsyntax``: the preferred one, the others, then
    :data:`LAST_RESORT_PLUGINS` only when nothing else is available."""
    preferred = PREFERRED_PLUGIN.get(tsyntax)
    order = ([preferred] if preferred in available else []) + sorted(
        p for p in available if p != preferred and p not in LAST_RESORT_PLUGINS)
    return order or [p for p in available if p in LAST_RESORT_PLUGINS]


def _decode(decoder, ds, tsyntax: str, options: dict):
    """Decode all frames, trying the plugins in :func:`decode_plugins` order; the last error is raised."""
    plugins = decode_plugins(tuple(decoder.available_plugins), str(tsyntax))
    if not plugins:
        return decoder.as_array(ds, raw=False, validate=True, **options)  # pydicom says what is missing
    errors = []
    for plugin in plugins:
        try:
            return decoder.as_array(ds, raw=False, validate=True, decoding_plugin=plugin, **options)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - incl. pyo3 panics (not Exceptions)
            errors.append(f"{plugin}: {exc}".splitlines()[0])
            last = exc
    if len(errors) == 1 and isinstance(last, Exception):
        raise last
    raise RuntimeError("no decoder could decode the pixel data: " + "; ".join(errors)) from last


def _check_native_length(ds, tsyntax, rows, cols, frames, samples, photometric) -> None:
    """For native (uncompressed) pixel data, a short value means the file was cut off."""
    if tsyntax.is_compressed or "PixelData" not in ds:
        return
    bits = _int(ds, "BitsAllocated", 0)
    if bits not in (1, 8, 16, 32, 64):
        raise SkipFile("unsupported-image", f"BitsAllocated={bits}")
    per_pixel = 2 if photometric == "YBR_FULL_422" else samples  # 4:2:2 stores 2 values/pixel
    expected_bits = rows * cols * frames * per_pixel * bits
    expected = (expected_bits + 7) // 8
    actual = len(ds.PixelData or b"")
    if actual < expected:
        raise SkipFile("truncated", f"pixel data has {actual} bytes, {expected} expected for {rows}x{cols}x{frames}x{per_pixel} at {bits} bits")


def _to_modality_units(frame: np.ndarray, ds, index: int, photometric: str) -> tuple[np.ndarray, bool]:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space

    if frame.ndim == 2 and photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
        photometric = "RGB"
    if frame.ndim == 3:
        if photometric.startswith("YBR") and photometric in ("YBR_FULL", "YBR_FULL_422"):
            frame = convert_color_space(frame, photometric, "RGB")
        elif photometric not in ("RGB", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"):
            raise SkipFile("unsupported-image", f"colour space {photometric!r}")
        return np.tensordot(frame.astype(np.float32), BT601, axes=([2], [0])).astype(np.float32), False
    source = _frame_rescale(ds, index)
    if source.get("ModalityLUTSequence"):
        frame = np.asarray(apply_modality_lut(frame, source), dtype=np.float32)
    elif "RescaleSlope" in source and "RescaleIntercept" in source:
        # The linear modality LUT directly in float32: same values as pydicom's float64
        # version to within one float32 ulp, without a float64 copy of every frame.
        slope, intercept = float(source.RescaleSlope), float(source.RescaleIntercept)
        frame = frame.astype(np.float32)
        if slope != 1.0:
            frame *= np.float32(slope)
        if intercept != 0.0:
            frame += np.float32(intercept)
    else:
        frame = frame.astype(np.float32)
    return np.ascontiguousarray(frame), photometric == "MONOCHROME1"


# --- metadata ------------------------------------------------------------------------------


def _get(ds, keyword: str, default: Any = None) -> Any:
    """A tag's value, or ``default`` when absent or unparseable (real files are messy)."""
    try:
        value = ds.get(keyword, default)
    except Exception:  # noqa: BLE001
        return default
    return default if value is None else value


def _int(ds, keyword: str, default: int) -> int:
    try:
        return int(_first(_get(ds, keyword, default)))
    except (TypeError, ValueError, IndexError):
        return default


def _float(value: Any, default: float = math.nan) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return default
    return result if math.isfinite(result) else default


def _first(value: Any) -> Any:
    if value is not None and not isinstance(value, (str, bytes)) and hasattr(value, "__getitem__"):
        return value[0] if len(value) else None
    return value


def _functional_group(ds, index: int, sequence: str):
    """The per-frame (else shared) functional group item holding ``sequence``, or None."""
    for groups, pos in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        seq = _get(ds, groups, None)
        try:
            if seq is not None and len(seq) > pos and sequence in seq[pos] and len(seq[pos][sequence].value):
                return seq[pos][sequence].value[0]
        except Exception:  # noqa: BLE001
            continue
    return None


def _frame_rescale(ds, index: int):
    """The dataset carrying the modality LUT for a frame (the functional group for enhanced objects)."""
    if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
        return ds
    group = _functional_group(ds, index, "PixelValueTransformationSequence")
    return group if group is not None and "RescaleSlope" in group else ds


def _transfer_syntax(ds):
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    value = _get(meta, "TransferSyntaxUID", None) if meta is not None else None
    if value:
        return UID(str(value))
    # A bare dataset: the encoding pydicom actually used to read it is the syntax.
    implicit, little = ds.original_encoding
    tsyntax = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ds.file_meta.TransferSyntaxUID = tsyntax  # decoders need it
    return tsyntax


def _base_meta(ds, *, key: bytes | None, uri: str, tsyntax: str) -> dict:
    patient_id = str(_get(ds, "PatientID", "") or "")
    sop = str(_get(ds, "SOPInstanceUID", "") or "").strip()
    if not sop:
        sop = _content_uid(ds)
    return {
        "sop_instance_uid": sop,
        "series_instance_uid": str(_get(ds, "SeriesInstanceUID", "") or ""),
        "study_instance_uid": str(_get(ds, "StudyInstanceUID", "") or ""),
        "modality": str(_get(ds, "Modality", "") or ""),
        "body_part": str(_get(ds, "BodyPartExamined", "") or ""),
        "patient_pseudonym": pseudonym(patient_id, key) if key else "",
        "instance_number": _int(ds, "InstanceNumber", -1),
        "transfer_syntax": tsyntax,
        "source": uri,
        "study_datetime": _study_datetime(ds),
    }


def _study_datetime(ds) -> str:
    """StudyDate + StudyTime as ``YYYYMMDDHHMMSS`` (sortable); "" without a valid StudyDate."""
    date = "".join(ch for ch in str(_get(ds, "StudyDate", "") or "") if ch.isdigit())
    if len(date) != 8:
        return ""
    time = "".join(ch for ch in str(_get(ds, "StudyTime", "") or "").split(".")[0] if ch.isdigit())[:6]
    return date + time.ljust(6, "0")


def _content_uid(ds) -> str:
    """A stable 2.25 UID derived from the pixel bytes, for files without SOPInstanceUID."""
    data = b""
    for keyword in PIXEL_KEYWORDS:
        if keyword in ds:
            data = bytes(ds[keyword].value or b"")
            break
    return "2.25." + str(int.from_bytes(hashlib.sha256(data).digest()[:15], "big"))


def _orientation(ds, index: int) -> np.ndarray | None:
    """ImageOrientationPatient (row and column direction cosines) of a frame, as a 2×3 array."""
    group = _functional_group(ds, index, "PlaneOrientationSequence")
    value = _get(group, "ImageOrientationPatient", None) if group is not None else None
    if value is None:
        value = _get(ds, "ImageOrientationPatient", None)
    try:
        cosines = np.array([float(v) for v in value], dtype=np.float64).reshape(2, 3)
    except (TypeError, ValueError):
        return None
    return cosines if np.isfinite(cosines).all() and np.linalg.norm(cosines, axis=1).min() > 0.5 else None


#: the patient axis (LPS index) a slice normal points along → the plane's name
PLANES = {0: "sagittal", 1: "coronal", 2: "axial"}


def _slice_normal(ds, index: int) -> np.ndarray | None:
    """The unit slice normal (row × column direction cosines), or None without ImageOrientationPatient."""
    cosines = _orientation(ds, index)
    if cosines is None:
        return None
    normal = np.cross(cosines[0], cosines[1])
    return normal / max(np.linalg.norm(normal), 1e-12)


def _slice_plane(ds, index: int) -> str:
    """``axial``, ``coronal`` or ``sagittal`` (the patient axis the normal is closest to, within
    about 35°), ``oblique`` otherwise, ``""`` without ImageOrientationPatient."""
    normal = _slice_normal(ds, index)
    if normal is None:
        return ""
    axis = int(np.argmax(np.abs(normal)))
    return PLANES[axis] if abs(normal[axis]) >= 0.8 else "oblique"


def _slice_position(ds, index: int) -> float:
    """The slice's position in mm along its normal (ImagePositionPatient · (row × column)).

    For an axial slice this is its z; for sagittal and coronal slices it is x or y, so slices of
    any series are ordered and spaced correctly. Without ImageOrientationPatient: z.
    """
    group = _functional_group(ds, index, "PlanePositionSequence")
    position = _get(group, "ImagePositionPatient", None) if group is not None else None
    if position is None:
        position = _get(ds, "ImagePositionPatient", None)
    try:
        xyz = np.array([_float(position[i]) for i in range(3)], dtype=np.float64)
    except (TypeError, IndexError):
        return math.nan
    normal = _slice_normal(ds, index)
    if normal is None:
        return float(xyz[2])
    # The sign of the normal follows the dominant axis, so an axial slice keeps its z.
    axis = int(np.argmax(np.abs(normal)))
    return float(np.dot(xyz, normal) * np.sign(normal[axis]))


def _pixel_spacing(ds, index: int) -> tuple[float, float]:
    spacing = _get(ds, "PixelSpacing", None) or _get(ds, "ImagerPixelSpacing", None)
    if spacing is None:
        group = _functional_group(ds, index, "PixelMeasuresSequence")
        spacing = _get(group, "PixelSpacing", None) if group is not None else None
    try:
        return (_float(spacing[0]), _float(spacing[1]))
    except (TypeError, IndexError):
        return (math.nan, math.nan)


def _voi(ds, index: int) -> tuple[float, float] | None:
    source = ds
    if "WindowCenter" not in ds:
        group = _functional_group(ds, index, "FrameVOILUTSequence")
        if group is not None:
            source = group
    centre, width = _float(_first(_get(source, "WindowCenter", None))), _float(_first(_get(source, "WindowWidth", None)))
    if math.isfinite(centre) and math.isfinite(width) and width >= 1:
        return (centre, width)
    lut = _get(ds, "VOILUTSequence", None)
    try:
        descriptor = lut[0].LUTDescriptor
        entries = int(descriptor[0]) or 2**16
        first = float(descriptor[1])
    except Exception:  # noqa: BLE001
        return None
    width = float(entries)
    return (first + 0.5 + (width - 1.0) / 2.0, width)
