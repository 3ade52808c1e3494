"""The `mindvideo` command: help, version, env, and clean errors."""

import subprocess
import sys

import pytest

from mindvideo import __version__
from mindvideo.cli.main import SUBCOMMANDS, main


def test_help_lists_every_registered_stage(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_env_reports_versions_and_device(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for key in ("python:", "torch:", "diffusers:", "transformers:", "accelerate:", "nibabel:"):
        assert key in out
    assert "device:" in out and "torch threads:" in out


def test_unknown_command_is_an_argparse_error():
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "mindvideo", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_user_error_is_one_line_exit_2(tmp_path, capsys):
    code = main(["simulate", "--preset", "tiny", "--out", str(tmp_path / "x"), "sed=1"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "Unknown config key 'sed'" in err and "'seed'" in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    from mindvideo.utils import UserError

    with pytest.raises(UserError):
        main(["--debug", "simulate", "--preset", "tiny", "--out", str(tmp_path / "x"), "sed=1"])
