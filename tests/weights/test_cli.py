"""`nextgpt weights ...` as the top-level CLI will call it: register(subparsers), then args.func(args)."""
import argparse

from safetensors.torch import load_file

from tests.weights.release_files import pickled
from weights.cli import main, register


def test_register_adds_the_weights_group():
    parser = argparse.ArgumentParser(prog="nextgpt")
    register(parser.add_subparsers(dest="command", required=True))
    for argv in (["weights", "fetch", "--only", "llm,image", "--dry-run"], ["weights", "verify", "d"],
                 ["weights", "list"], ["weights", "build-tiny"], ["weights", "convert", "bin", "d"]):
        args = parser.parse_args(argv)
        assert callable(args.func)
    assert parser.parse_args(["weights", "fetch", "--only", "llm,image"]).only == ("llm", "image")


def test_list_shows_presets_sizes_and_computed_memory(tiny_dir, capsys):
    assert main(["weights", "list", "--dir", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "on disk: yes" in out and "computed from parameter counts, not measured" in out
    # the memory table's row, not the on-disk row (whose path may hold "GB": /tmp/tmp.stAYpfGBiU)
    line = next(l for l in out.splitlines() if l.strip().startswith("nextgpt-7b-tiva-v0") and "on disk:" not in l)
    assert "15.2 GB" in line and "22.9 GB" in line  # text alone, everything


def test_build_tiny_builds_where_asked(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr("weights.tiny.build_tiny", lambda out: built.append(out) or out)
    assert main(["weights", "build-tiny", "--dir", str(tmp_path / "t")]) == 0
    assert built == [tmp_path / "t"]


def test_convert_checkpoint_command(tiny_dir, tmp_path, capsys):
    state = load_file(str(tiny_dir / "nextgpt" / "pytorch_model.safetensors"))
    (tmp_path / "pytorch_model.pt").write_bytes(pickled(state))
    dest = tmp_path / "pytorch_model.safetensors"
    assert main(["weights", "convert", "checkpoint", str(tmp_path / "pytorch_model.pt"), str(dest)]) == 0
    assert load_file(str(dest)).keys() == state.keys()
    assert main(["weights", "convert", "checkpoint", str(tmp_path / "absent.pt"), str(dest)]) == 2
    assert "error:" in capsys.readouterr().err
