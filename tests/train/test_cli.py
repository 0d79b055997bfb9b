"""``medcbir train`` and ``medcbir export-onnx`` through the real click group."""

from __future__ import annotations

from medcbir.cli.main import main


def test_train_then_export_from_the_command_line(phantom_archive, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    args = ["train", str(phantom_archive), "--method", "simclr", "--method-option", "proj_dim=32", "--epochs", "1",
            "--batch-size", "16", "--size", "64", "--out", str(out), "--workers", "1", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "trained simclr (resnet18) for 1 epoch(s) of 1: 80 images" in text
    assert "(CT=ct-liver-wide,*=robust, 64 px, body crop at 3.5 mm/px)" in text and out.is_file()

    assert main(["export-onnx", str(out), str(tmp_path / "cli.onnx")]) == 0
    text = capsys.readouterr().out
    assert "parity: max |Δ| torch vs onnxruntime" in text and "on 8 random images" in text

    # Changed options on --resume: one line on stderr, exit 2.
    assert main([*args[:-1], "--epochs", "2", "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume") and err.count("\n") == 1


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "none"), "--out", str(tmp_path / "x.pt"), "--quiet"]) == 1
    assert capsys.readouterr().err.startswith("error: archive not found")
    (tmp_path / "bad.pt").write_text("nope")
    assert main(["export-onnx", str(tmp_path / "bad.pt"), str(tmp_path / "x.onnx")]) == 1
    assert "not a readable encoder checkpoint" in capsys.readouterr().err
