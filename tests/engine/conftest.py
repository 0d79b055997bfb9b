import pytest
from tests.engine.indexes import flat_index, small_encoder  # noqa: F401 - fixtures


@pytest.fixture(scope="session")
def lesions(tmp_path_factory):
    """Phantom v3 (8 patients × 24 slices, lesions of four kinds) indexed with regions."""
    import csv

    from medcbir.imaging.phantom import make_archive
    from medcbir.indexer import index_archive

    root = tmp_path_factory.mktemp("roi")
    make_archive(root / "archive", patients=8, slices=24, seed=5, version=3, workers=1)
    index_archive(root / "archive", root / "index", "default", workers=1, progress=False, shard_size=40)
    rows = list(csv.DictReader(open(root / "archive" / "lesion-boxes.csv")))
    kinds = {r["sop_instance_uid"]: r["label"] for r in csv.DictReader(open(root / "archive" / "labels-lesion-kind.csv"))}
    return {"root": root, "archive": root / "archive", "index": root / "index", "boxes": rows, "kinds": kinds}
