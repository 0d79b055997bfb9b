"""Manifest generations: the newest intact one, when ``manifest.json`` is damaged.

Every commit keeps the generation it replaces as ``manifest-GGGGGG.json`` (the last
:data:`~medcbir.indexer.manifest.KEEP_GENERATIONS`), and the files those reference stay on disk.
A truncated or otherwise unreadable ``manifest.json`` (a disk fault, a bad copy, a hand edit)
then costs at most the generations committed after the newest intact one: their shards are
still on disk but no longer referenced, so their items are indexed again by the next run (the
writer skips items by key, and it only knows the keys of the generation it resumed).

:func:`newest_intact` finds that generation; opening an index and resuming a writer use it
through :func:`fallback_manifest` (with a warning), and
:func:`medcbir.indexer.recovery.repair` (``medcbir verify --repair``) commits it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medcbir.errors import IndexCorrupt, MedcbirError
from medcbir.indexer.manifest import MANIFEST, history, manifest_path, parse_manifest, referenced_files
from medcbir.indexer.integrity import check_files

log = logging.getLogger(__name__)


@dataclass
class Recovery:
    """The generation an index falls back to, and what that loses.

    Attributes:
        manifest: the intact manifest chosen.
        source: the file it was read from (``manifest.json`` when nothing was wrong).
        generation: its generation number.
        rejected: one line per newer candidate that was not intact, with the reason.
        lost_generations: generations newer than the chosen one that existed on disk.
        lost_shards: shard files committed after the chosen generation (unreferenced now).
        lost_items: items in those shards (indexed again by the next indexing run).
        dropped_shards: damaged shards dropped from the chosen generation.
        dropped_items: their items (embedded again by the next indexing run).
        rebuilt: other damaged files replaced without losing an item (FAISS files), and
            ``trained`` when a damaged trained FAISS file sent the index back to exact search.
    """

    manifest: dict
    source: str
    generation: int
    rejected: list[str] = field(default_factory=list)
    lost_generations: list[int] = field(default_factory=list)
    lost_shards: list[str] = field(default_factory=list)
    lost_items: int = 0
    dropped_shards: list[str] = field(default_factory=list)
    dropped_items: int = 0
    rebuilt: list[str] = field(default_factory=list)

    @property
    def recovered(self) -> bool:
        """True when the current ``manifest.json`` was not the one chosen."""
        return self.source != MANIFEST

    @property
    def changed(self) -> bool:
        """True when the repair committed a new generation."""
        return self.recovered or bool(self.dropped_shards or self.rebuilt)

    def summary(self) -> str:
        if not self.changed:
            return f"generation {self.generation} is intact; nothing to repair"
        parts = []
        if self.recovered:
            parts.append(f"fell back to generation {self.generation} ({self.source}); lost generation(s) "
                         f"{', '.join(map(str, self.lost_generations)) or '?'}: {self.lost_items} item(s) in "
                         f"{len(self.lost_shards)} shard(s), indexed again by the next run")
        if self.dropped_shards:
            parts.append(f"dropped {self.dropped_items} item(s) of damaged {', '.join(self.dropped_shards)}; "
                         "the next `medcbir index` run embeds them again from their sources")
        if self.rebuilt:
            parts.append(f"rebuilt {', '.join(self.rebuilt)} (no item lost)")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("manifest")
        return data


def newest_intact(index_dir: str | Path, check: str = "checksums") -> Recovery:
    """The newest generation whose manifest parses and whose committed files pass ``check``.

    Args:
        index_dir: the index folder.
        check: how committed files are checked (a ``verify`` mode of ``IndexStore.open``).

    Raises:
        IndexCorrupt: no intact generation is left.
    """

    index_dir = Path(index_dir)
    candidates = [(None, manifest_path(index_dir))] + history(index_dir)
    rejected: list[str] = []
    seen_generations: list[int] = []
    for generation, path in candidates:
        try:
            manifest = parse_manifest(path) if path.is_file() else None
            if manifest is None:
                raise IndexCorrupt(f"{path.name}: missing")
            seen_generations.append(int(manifest["generation"]))
            check_files(index_dir, manifest, check)
        except (IndexCorrupt, OSError, KeyError, TypeError, ValueError) as exc:
            if generation is not None:
                seen_generations.append(generation)
            rejected.append(f"{path.name}: {exc}")
            continue
        chosen = int(manifest["generation"])
        rec = Recovery(manifest=manifest, source=path.name, generation=chosen, rejected=rejected)
        rec.lost_generations = sorted({g for g in seen_generations if g > chosen})
        if rec.recovered and not rec.lost_generations:
            rec.lost_generations = [chosen + 1]  # only the damaged manifest.json knew its number
        rec.lost_shards, rec.lost_items = _unreferenced_shards(index_dir, manifest)
        return rec
    raise IndexCorrupt(f"{index_dir}: no intact manifest generation left ({'; '.join(rejected)})")


def _unreferenced_shards(index_dir: Path, manifest: dict) -> tuple[list[str], int]:
    """Shards on disk committed after ``manifest`` (numbered from its ``next_shard`` on)."""
    import h5py

    known = referenced_files(manifest)
    lost, items = [], 0
    for path in sorted(index_dir.glob("shard-*.h5")):
        try:
            number = int(path.stem.split("-")[1])
        except (IndexError, ValueError):
            continue
        if path.name in known or number < int(manifest.get("next_shard", 0)):
            continue
        lost.append(path.name)
        try:
            with h5py.File(path, "r") as f:
                items += int(f["ids"].shape[0])
        except (OSError, KeyError):
            pass
    return lost, items


def fallback_manifest(index_dir: Path, reason: MedcbirError, check: str = "sizes") -> tuple[dict, Recovery]:
    """The manifest to work on when ``manifest.json`` is damaged, logged as a warning.

    The returned manifest's generation is raised past every generation seen, so the next
    commit does not reuse the lost generation's number.
    """
    rec = newest_intact(index_dir, check=check)
    log.warning("%s: %s; %s", index_dir, reason, rec.summary())
    manifest = dict(rec.manifest)
    manifest["generation"] = max([rec.generation, *rec.lost_generations])
    return manifest, rec
