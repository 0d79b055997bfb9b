"""labels.csv: one reader (medcbir.imaging.labels) for evaluation, training, explanations, reproduce and the demo."""

from __future__ import annotations

import pytest

from medcbir.errors import ConfigError
from medcbir.imaging.labels import LabelsError, read_labels


def _write(tmp_path, data: bytes):
    path = tmp_path / "labels.csv"
    path.write_bytes(data)
    return path


def test_rows_keep_their_frame_and_the_last_row_of_a_key_wins(tmp_path):
    path = _write(tmp_path, b"sop_instance_uid,frame,label\n1.2.3,0,liver\n1.2.3,1,kidney\n 1.2.4 ,,pelvis \n1.2.3,1,spleen\n")
    labels = read_labels(path)
    assert len(labels) == 4 and labels.frames == (0, 1, 0, 1)
    assert labels.by_item() == {("1.2.3", 0): "liver", ("1.2.3", 1): "spleen", ("1.2.4", 0): "pelvis"}


def test_without_a_frame_column_every_row_is_frame_0_and_a_bom_is_allowed(tmp_path):
    path = _write(tmp_path, "\ufeffsop_instance_uid,label\n1.2.3,liver\n".encode())
    assert read_labels(path).by_item() == {("1.2.3", 0): "liver"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("sop_instance_uid,frame,label\n1.2.3,0,f\xe9mur\n".encode("latin-1"), r"is not UTF-8 text \(byte 0xe9 at offset 38\)"),
        (b"uid,label\n1.2,x\n", r"missing column\(s\) sop_instance_uid"),
        (b"sop_instance_uid,frame,label\n1.2,0,a\n1.3,x,b\n", r"labels.csv:3: frame 'x' is not an integer"),
    ],
)
def test_bad_files_are_one_readable_value_error(tmp_path, data, message):
    with pytest.raises(LabelsError, match=message) as caught:
        read_labels(_write(tmp_path, data))
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ConfigError)
    assert "\n" not in str(caught.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(LabelsError, match="does not exist"):
        read_labels(tmp_path / "absent.csv")


def test_evaluation_training_and_explanations_use_this_reader():
    from medcbir.engine.evaluate import read_labels as engine_reader
    from medcbir.explain.evaluation.run import read_labels as explain_reader
    from medcbir.train.dataset import read_labels as train_reader

    assert explain_reader is train_reader is engine_reader is read_labels
