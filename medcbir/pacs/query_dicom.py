"""A query's DICOM as the engine should decode it: a bounded cost, and its first frame only.

A search or an explanation through the plugin queries with frame 0 of its DICOM (as
``medcbir.engine`` does with any file), but the engine decodes every frame of the file it is
given. The worker therefore reads the header first, refuses a query whose first frame would cost
more than ``MaxDecodeMB`` to decode (``medcbir.imaging.dicom.decode_cost``; HTTP 400, before
any pixel is decoded), and hands the engine a copy of a multi-frame file cut to its first frame.
"""

from __future__ import annotations

import io

from medcbir.imaging.dicom import check_decode_cost, read_dataset
from medcbir.imaging.items import SkipFile

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _int(ds, keyword: str, default: int) -> int:
    try:
        return int(ds.get(keyword, default) or default)
    except (TypeError, ValueError):
        return default


def first_frame_query(data: bytes, max_bytes: int) -> bytes:
    """``data`` checked and, if it has several frames, cut to its first.

    Args:
        data: a DICOM file (Part 10 or a bare dataset).
        max_bytes: the largest decoding cost of its first frame.

    Raises:
        SkipFile: it is not DICOM, is cut short, or would cost too much to decode (``too-large``).
    """
    ds = read_dataset(io.BytesIO(data))
    check_decode_cost(ds, max_bytes, frames=1)
    frames = _int(ds, "NumberOfFrames", 1)
    keyword = next((k for k in PIXEL_KEYWORDS if k in ds), None)
    if frames <= 1 or keyword is None:
        return data
    try:
        return _cut(ds, keyword, frames)
    except SkipFile:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever pydicom says about a broken file: one line
        raise SkipFile("corrupt", f"cannot read its first frame: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}") from None


def _cut(ds, keyword: str, frames: int) -> bytes:
    from pydicom.encaps import encapsulate, get_frame
    from pydicom.sequence import Sequence

    element = ds[keyword]
    if element.is_undefined_length:  # encapsulated: the first frame's fragments
        ds[keyword].value = encapsulate([get_frame(element.value, 0, number_of_frames=frames)])
    else:
        per_pixel = 2 if str(ds.get("PhotometricInterpretation", "")).upper() == "YBR_FULL_422" else _int(ds, "SamplesPerPixel", 1)
        bits = _int(ds, "Rows", 0) * _int(ds, "Columns", 0) * per_pixel * _int(ds, "BitsAllocated", 16)
        ds[keyword].value = element.value[: (bits + 7) // 8]
    ds.NumberOfFrames = 1
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) > 1:
        ds.PerFrameFunctionalGroupsSequence = Sequence([per_frame[0]])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()
