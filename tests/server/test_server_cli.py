"""``parley-server``'s flags: what it refuses before it starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.cli.server import parse


@pytest.mark.parametrize("value", ["0", "0.19", "-5", "nan", "inf", "2e9"])
def test_a_send_rate_no_device_could_use_or_past_the_bound_is_refused(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(["--data-dir", str(tmp_path), "--sends-per-device-second", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("--sends-per-device-second must be 0.2..1e9")


def test_the_send_rate_reaches_the_configuration(tmp_path: Path) -> None:
    assert parse(["--data-dir", str(tmp_path)]).sends_per_device_s == 200
    config = parse(["--data-dir", str(tmp_path), "--sends-per-device-second", "0.5"])
    assert config.sends_per_device_s == 0.5
