"""Running ``mindvideo`` in the test process and checking its one-line errors."""

from __future__ import annotations

from mindvideo.cli.main import main


def run_quiet(argv: list[str], capsys) -> tuple[int, str]:
    """``mindvideo -q ARGV`` in this process: (exit code, stderr)."""
    capsys.readouterr()
    code = main(["-q", *argv])
    return code, capsys.readouterr().err.strip()


def assert_one_line_error(code: int, err: str, stage: str, *needles: str) -> None:
    """Exit 2 and one ``mindvideo STAGE: error: ...`` line holding every needle on stderr, no
    traceback (progress bars that ran before the fault aside)."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.split("\n") if line.strip() and "%|" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mindvideo {stage}: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
