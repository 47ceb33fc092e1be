"""Bad input never gives a traceback; damaged models and caches; NaN; kill -9 and resume."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kd_core.cli import main
from kd_core.config import CONFIG_FIELDS, RUN_KEYS, ConfigError
from kd_core.config_file import load_toml

# ---- generated bad configurations ---------------------------------------------------------


def _bad_value(name: str) -> st.SearchStrategy:
    m = CONFIG_FIELDS[name].metadata
    kind = CONFIG_FIELDS[name].type
    wrong_type = st.one_of(
        st.booleans(),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    )
    if m["choices"]:
        return st.one_of(
            st.text(max_size=12).filter(lambda s: s not in m["choices"]), st.integers(), wrong_type
        )
    if kind == "str":
        return st.one_of(st.just(""), st.just("   "), st.integers(), wrong_type)
    lo, hi = m["lo"], m["hi"]
    below = st.floats(
        max_value=lo - 1e-6 if not m["lo_open"] else lo, allow_nan=False, allow_infinity=False
    )
    above = st.floats(
        min_value=hi + 1e-6 if not m["hi_open"] else hi, allow_nan=False, allow_infinity=False
    )
    out_of_range = st.one_of(below, above)
    if kind == "int":
        out_of_range = st.one_of(
            st.integers(max_value=int(math.floor(lo)) - 1),
            st.integers(min_value=int(math.ceil(hi)) + 1),
            st.floats(min_value=lo, max_value=hi).filter(lambda x: x != int(x)),
        )
    return st.one_of(
        out_of_range,
        st.just(float("nan")),
        st.just(float("inf")),
        st.text(max_size=6).filter(lambda s: not _number(s)),  # "0" is a good alpha
        wrong_type,
    )


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


bad_pair = st.sampled_from(sorted(CONFIG_FIELDS)).flatmap(
    lambda name: st.tuples(st.just(name), _bad_value(name))
)
unknown_key = st.from_regex(r"[a-z][a-z_]{2,14}", fullmatch=True).filter(
    lambda k: k not in CONFIG_FIELDS and k not in RUN_KEYS
)


def _toml_text(data: dict) -> str:
    try:
        return tomli_w.dumps(data)
    except (TypeError, ValueError):  # nan/inf or other values TOML cannot hold: write raw
        k, v = next(iter(data.items()))
        return f"{k} = {v!r}\n"


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(pair=bad_pair)
def test_bad_values_in_kd_toml_one_line_status_2(pair, tmp_path_factory, capsys):
    name, value = pair
    d = tmp_path_factory.mktemp("cfg")
    path = d / "kd.toml"
    path.write_text(_toml_text({name: value}))
    with pytest.raises(ConfigError) as e:
        load_toml(path)
    assert "\n" not in str(e.value)
    rc = main(["distill", "--config", str(path), "--save-config", str(d / "out.toml")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("kd: error:") and "\n" not in err
    assert not (d / "out.toml").exists()


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(pair=bad_pair)
def test_bad_values_as_flags_one_line_status_2(pair, tmp_path_factory, capsys):
    name, value = pair
    d = tmp_path_factory.mktemp("flag")
    if isinstance(value, bool | list | dict):
        value = json.dumps(value)
    field = CONFIG_FIELDS[name]
    if field.type == "str" and not field.metadata["choices"]:
        # On the command line any non-blank text is a good folder or key name ("0" too).
        value = "   "
    rc = main(
        ["distill", f"--{name.replace('_', '-')}", str(value), "--save-config", str(d / "out.toml")]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.startswith("kd: error:")
    assert not (d / "out.toml").exists()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(key=unknown_key, text=st.text(max_size=40))
def test_unknown_keys_and_garbage_toml(key, text, tmp_path_factory, capsys):
    d = tmp_path_factory.mktemp("unk")
    (d / "a.toml").write_text(f"{key} = 1\n")
    assert main(["distill", "--config", str(d / "a.toml"), "--save-config", str(d / "o.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{key}: unknown setting" in err and "\n" not in err
    (d / "b.toml").write_text("[[[" + text)
    assert main(["distill", "--config", str(d / "b.toml")]) == 2
    assert "\n" not in capsys.readouterr().err.strip()


# ---- damaged models, unwritable output, damaged cache -------------------------------------


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "damage,words",
    [
        ("no_config", "has no config.json"),
        ("bad_config", "config.json is not valid JSON"),
        ("truncated_weights", "is damaged"),
        ("no_weights", "has no *.safetensors"),
        ("no_tokenizer", "has no tokenizer"),
    ],
)
def test_damaged_model_folder(tiny_pair, tmp_path, capsys, damage, words):
    m = _copy_model(tiny_pair.student, tmp_path / "student")
    if damage == "no_config":
        (m / "config.json").unlink()
    elif damage == "bad_config":
        (m / "config.json").write_text("{nope")
    elif damage == "truncated_weights":
        w = m / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif damage == "no_weights":
        (m / "model.safetensors").unlink()
    else:
        (m / "tokenizer.json").unlink()
        (m / "tokenizer_config.json").unlink()
    rc = main(
        [
            "distill",
            "--teacher",
            str(tiny_pair.teacher),
            "--student",
            str(m),
            "--domain",
            "task",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and words in err and "\n" not in err
    assert not (tmp_path / "out" / "task").exists()


def test_missing_model_and_hub_id_offline(tmp_path, capsys):
    assert (
        main(
            [
                "distill",
                "--teacher",
                str(tmp_path / "nope"),
                "--domain",
                "task",
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "neither a local folder nor a Hugging Face id" in capsys.readouterr().err
    assert (
        main(
            [
                "distill",
                "--teacher",
                "no-such-org/no-such-model",
                "--domain",
                "task",
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "--allow-download" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
def test_unwritable_output(tmp_path, capsys):
    # /proc refuses new folders even to root: an output folder that cannot be written.
    rc = main(["distill", "--domain", "task", "--output", "/proc/kd-test-output"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("kd: error: output: cannot write") and "\n" not in err


def test_output_that_is_a_file(tiny_pair, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    rc = main(
        [
            "distill",
            "--teacher",
            str(tiny_pair.teacher),
            "--student",
            str(tiny_pair.student),
            "--domain",
            "task",
            "--output",
            str(f),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("kd: error: output: cannot write")


FAST = ["--iters", "4", "--max-tokens", "10", "--batch-size", "2", "--max-seq-length", "64"]


def test_damaged_teacher_cache_is_rebuilt(tiny_pair, tmp_path, capsys):
    args = [
        "distill",
        "--teacher",
        str(tiny_pair.teacher),
        "--student",
        str(tiny_pair.student),
        "--domain",
        "memory",
        "--output",
        str(tmp_path / "o"),
        *FAST,
    ]
    assert main(args) == 0
    cache = next((Path(os.environ["KD_CACHE_DIR"]) / "teacher").glob("memory-[!g]*"))
    data = bytearray(cache.read_bytes())
    cache.write_bytes(bytes(data[: len(data) // 3]))
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "damaged" in out and "rebuilding" in out and "cached:" in out


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tiny_pair, tmp_path, capsys):
    out = tmp_path / "o"
    base = [
        "distill",
        "--teacher",
        str(tiny_pair.teacher),
        "--domain",
        "debug",
        "--output",
        str(out),
        "--steps-per-save",
        "2",
        *FAST,
    ]
    assert main([*base[:1], *base[1:], "--student", str(tiny_pair.student), "--iters", "2"]) == 0
    # The checkpoint's adapter holds a NaN (same run, same settings, so --resume takes it):
    # the loss becomes NaN on the next step. (A NaN in another student's weights would now be
    # refused before training: a different student is a different run.)
    ck = out / "debug" / "checkpoint_2" / "adapters.safetensors"
    w = mx.load(str(ck))
    key = sorted(w)[0]
    w[key] = mx.full(w[key].shape, float("nan"))
    mx.save_safetensors(str(ck), w)
    good = ck.read_bytes()
    final_before = (out / "debug" / "adapters.safetensors").read_bytes()
    rc = main([*base, "--student", str(tiny_pair.student), "--resume"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "loss became nan at step 3" in err and "learning_rate" in err
    assert "\n" not in err
    assert (out / "debug" / "checkpoint_2" / "adapters.safetensors").read_bytes() == good
    assert (out / "debug" / "adapters.safetensors").read_bytes() == final_before
    assert not (out / "debug" / "checkpoint_4").exists()


# ---- kill -9 at random moments, resume, compare -------------------------------------------


@pytest.mark.slow
def test_kill9_five_times_then_resume_matches_uninterrupted(tiny_pair, tmp_path):
    iters = 30  # room for five kills even when steps outrun the reader (12 flaked under load)
    common = [
        sys.executable,
        "-m",
        "kd_core",
        "--teacher",
        str(tiny_pair.teacher),
        "--student",
        str(tiny_pair.student),
        "--domain",
        "reflection",
        "--iters",
        str(iters),
        "--steps-per-save",
        "1",
        "--max-tokens",
        "10",
        "--batch-size",
        "2",
        "--max-seq-length",
        "64",
        "--learning-rate",
        "0.01",
        "--lora-dropout",
        "0.1",
        "--events",
        "jsonl",
    ]
    env = dict(os.environ)
    straight = subprocess.run(
        [*common, "--output", str(tmp_path / "straight")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert straight.returncode == 0, straight.stderr

    rng = random.Random(1234)
    out = tmp_path / "killed"
    kills = 0
    for _ in range(12):
        if kills >= 5:
            break
        proc = subprocess.Popen(
            [*common, "--output", str(out), "--resume"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        # Kill after a random number of step events, at a random moment after it.
        target = rng.randint(1, 3)
        seen = 0
        finished = False
        for line in proc.stdout:
            if '"kind":"step"' in line:
                seen += 1
                if seen >= target:
                    time.sleep(rng.uniform(0, 0.05))
                    break
            if '"kind":"run_finished"' in line:
                finished = True
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if finished:
            break
    assert kills >= 5
    final = subprocess.run(
        [*common, "--output", str(out), "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr
    a = mx.load(str(out / "reflection" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "straight" / "reflection" / "adapters.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert np.allclose(np.array(a[k]), np.array(b[k]), atol=1e-5), k
    rows = (out / "reflection" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == list(range(1, iters + 1))
