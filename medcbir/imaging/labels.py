"""``labels.csv``: the ground-truth label of archive items, for evaluation and supervised fine-tuning.

One row per item, with a header: ``sop_instance_uid,frame,label`` (``frame`` is the 0-based frame
of a multi-frame instance; without the column every row is frame 0). UTF-8 (a byte-order mark is
allowed); cells are stripped of surrounding spaces; when a key appears twice, its last row wins.
The phantom archive writes one (:mod:`medcbir.imaging.phantom`).

Example:
    >>> labels = read_labels("archive/labels.csv")                       # doctest: +SKIP
    >>> labels.by_item()[("1.2.826.0.1.3680043.8.498.1", 0)]             # doctest: +SKIP
    'thorax'
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from medcbir.errors import ConfigError

COLUMNS = ("sop_instance_uid", "frame", "label")
REQUIRED = ("sop_instance_uid", "label")


class LabelsError(ConfigError, ValueError):
    """A labels file that cannot be read: missing, not UTF-8, a column or a frame number wrong."""


@dataclass(frozen=True)
class Labels:
    """The rows of a labels file, in file order (duplicates kept: :meth:`by_item` resolves them)."""

    path: str
    uids: tuple[str, ...]
    frames: tuple[int, ...]
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.uids)

    def by_item(self) -> dict[tuple[str, int], str]:
        """``{(sop_instance_uid, frame): label}``; the last row of a repeated key wins."""
        return dict(zip(zip(self.uids, self.frames), self.labels))


def read_labels(path: str | Path) -> Labels:
    """Read a ``sop_instance_uid,frame,label`` file.

    Raises:
        LabelsError: (a ``ConfigError`` and a ``ValueError``) the file does not exist, is not
            UTF-8 text, lacks a column, or has a frame that is not an integer; the message names
            the file (and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"labels file {path} does not exist")
    uids: list[str] = []
    frames: list[int] = []
    labels: list[str] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise LabelsError(f"{path}: missing column(s) {', '.join(missing)} (expected {','.join(COLUMNS)})")
            for line, row in enumerate(reader, start=2):
                if row.get("sop_instance_uid") is None or row.get("label") is None:
                    raise LabelsError(f"{path}:{line}: fewer columns than the header ({','.join(reader.fieldnames or [])})")
                frame = (row.get("frame") or "").strip()
                try:
                    frames.append(int(frame or 0))
                except ValueError:
                    raise LabelsError(f"{path}:{line}: frame {frame!r} is not an integer") from None
                uids.append((row["sop_instance_uid"] or "").strip())
                labels.append((row["label"] or "").strip())
    except UnicodeDecodeError as exc:
        raise LabelsError(
            f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None
    except csv.Error as exc:
        raise LabelsError(f"{path}: not a CSV file ({exc})") from None
    except OSError as exc:
        raise LabelsError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    return Labels(str(path), tuple(uids), tuple(frames), tuple(labels))
