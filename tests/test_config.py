"""KDConfig validation, kd.toml round trip, CLI precedence and one-line errors."""

from __future__ import annotations

import json

import pytest

from kd_core.cli import main
from kd_core.config import ConfigError, KDConfig, RunSpec, coerce_value
from kd_core.config_file import load_toml, save_toml


def test_defaults_match_the_seed():
    c = KDConfig()
    seed_defaults = (c.temperature, c.alpha, c.lora_rank, c.batch_size, c.num_iters)
    assert seed_defaults == (2.0, 0.7, 16, 4, 200)
    # The loss temperature and the teacher's sampling temperature are separate settings.
    assert KDConfig(temperature=3.0).teacher_temperature == KDConfig().teacher_temperature


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("temperature", 20.0, "temperature: 20.0 is out of range; allowed a number from 0.5 to 10"),
        ("alpha", -0.1, "alpha: -0.1 is out of range"),
        ("alpha", True, "alpha: expected a number"),
        ("lora_rank", 2.5, "lora_rank: expected a whole number"),
        (
            "teacher_mode",
            "live",
            "teacher_mode: 'live' is not allowed; use one of 'offline', 'online'",
        ),
        ("learning_rate", 0.0, "learning_rate: 0.0 is out of range; allowed a number above 0"),
    ],
)
def test_bad_values_name_field_and_range(field, value, words):
    with pytest.raises(ConfigError) as e:
        KDConfig(**{field: value})
    assert str(e.value).startswith(words)
    assert "\n" not in str(e.value)


def test_toml_round_trip(tmp_path):
    spec = RunSpec(
        teacher="t",
        student="s",
        domains=["task"],
        config=KDConfig(temperature=3.0, alpha=0.5, num_iters=7),
    )
    path = save_toml(spec, tmp_path / "kd.toml")
    back = load_toml(path)
    assert back.teacher == "t" and back.domains == ["task"]
    assert back.config == spec.config


def test_unknown_key_suggests(tmp_path):
    (tmp_path / "kd.toml").write_text("temprature = 2.0\n")
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        load_toml(tmp_path / "kd.toml")


def test_coerce_value():
    assert coerce_value("batch_size", " 8 ") == 8
    with pytest.raises(ConfigError, match="batch_size: expected a whole number"):
        coerce_value("batch_size", "eight")


def test_cli_flags_override_file_and_save_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kd.toml").write_text("alpha = 0.2\ntemperature = 4.0\n")
    rc = main(
        [
            "distill",
            "--alpha",
            "0.9",
            "--iters",
            "12",
            "--domain",
            "task",
            "--save-config",
            "out.toml",
        ]
    )
    assert rc == 0
    spec = load_toml(tmp_path / "out.toml")
    assert spec.config.alpha == 0.9 and spec.config.temperature == 4.0
    assert spec.config.num_iters == 12 and spec.domains == ["task"]


def test_cli_bad_input_one_line_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["distill", "--temperature", "50"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "temperature" in err and "0.5 to 10" in err
    assert main(["distill", "--no-such-flag"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["distill", "--domain", "../etc"]) == 2
    assert "not a valid name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_event_protocol_reports_input_errors_as_run_failed(tmp_path, monkeypatch, capsys):
    """A parent reading `--events jsonl` (the TUI) gets a terminal event even when the run
    never starts, exactly one, besides the one line on stderr."""
    from kd_core.events import RunFailed, event_from_json

    monkeypatch.chdir(tmp_path)
    for argv, field in (
        (["--domain", "cooking"], "domain"),
        (["--temperature", "50"], "temperature"),
    ):
        assert main(["distill", "--events", "jsonl", *argv]) == 2
        out, err = capsys.readouterr()
        events = [event_from_json(line) for line in out.splitlines()]
        assert len(events) == 1 and isinstance(events[0], RunFailed)
        assert events[0].error.startswith(field) and field in err
    assert list(tmp_path.iterdir()) == []


def test_a_config_is_frozen_once_checked() -> None:
    """Checked once at construction; nothing can change it afterwards (replace makes a new
    one, checked again)."""
    import dataclasses

    cfg = KDConfig(temperature=3.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.temperature = 50.0  # type: ignore[misc]
    assert cfg.replace(temperature=4.0).temperature == 4.0 and cfg.temperature == 3.0
    with pytest.raises(ConfigError, match="temperature"):
        cfg.replace(temperature=50.0)


def test_run_started_carries_the_typed_config_through_json() -> None:
    from kd_core.events import RunStarted, event_from_json

    cfg = KDConfig(temperature=3.0, divergence="jsd", num_iters=7)
    e = RunStarted("t", "s", ["thinking"], cfg, "/out", 7, "tw", "sw")
    back = event_from_json(e.to_json())
    assert isinstance(back.config, KDConfig) and back.config == cfg
    # A run recorded by another kd: unknown fields dropped, refused values at their default.
    old = {**cfg.to_dict(), "retired_field": 1, "top_k": -5}
    d = {**e.to_dict(), "config": old}
    again = event_from_json(json.dumps(d)).config
    assert again.top_k == KDConfig().top_k and again.temperature == 3.0
