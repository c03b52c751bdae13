"""The CLI turns bad input into one line and exit 2, and a bug into one line and exit 1 (--debug: the traceback)."""
import pytest

from openmm_cgml import cli


def test_missing_file_is_one_line_naming_it(fails, tmp_path):
    fails(["train", tmp_path / "nowhere.yaml"], names=["nowhere.yaml"])


def test_a_bug_is_one_line_exit_1_and_debug_shows_the_traceback(monkeypatch, capsys):
    def broken(args):
        raise KeyError("internal")

    parser = cli.build_parser("systems")
    monkeypatch.setattr(cli, "build_parser", lambda command=None: parser)
    parser._subparsers._group_actions[0].choices["systems"].set_defaults(_run=broken)
    assert cli.main(["systems"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cgml systems: internal error: KeyError") and "--debug" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(KeyError):
        cli.main(["--debug", "systems"])
