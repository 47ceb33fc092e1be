"""Built-in domains and custom domain files."""

from __future__ import annotations

import pytest

from kd_core.domains import (
    BUILTIN_DOMAINS,
    DOMAIN_PROMPTS,
    DomainError,
    check_domain_name,
    read_prompts_file,
    resolve_domains,
)


def test_seed_interface_and_sizes():
    assert list(DOMAIN_PROMPTS) == list(BUILTIN_DOMAINS)
    assert set(BUILTIN_DOMAINS) == {"thinking", "task", "action", "reflection", "debug", "memory"}
    for name in BUILTIN_DOMAINS:
        d = DOMAIN_PROMPTS[name]
        assert len(d["examples"]) >= 50 and len(d["heldout"]) >= 10 and d["description"]
        assert not set(d["examples"]) & set(d["heldout"])  # held-out never trained on
        assert len(set(d["examples"])) == len(d["examples"])


def test_custom_domain_files(tmp_path):
    plain = tmp_path / "legal.txt"
    plain.write_text("What is a contract?\n\n  Explain liability.  \n")
    assert read_prompts_file(plain) == ["What is a contract?", "Explain liability."]
    jl = tmp_path / "ops.jsonl"
    jl.write_text('{"prompt": "Restart the service."}\n{"prompt": "Rotate the keys."}\n')
    got = resolve_domains(["ops", "task"], [str(jl)])
    assert list(got) == ["ops", "task"] and got["ops"] == [
        "Restart the service.",
        "Rotate the keys.",
    ]


@pytest.mark.parametrize(
    "content,words",
    [
        ("", "holds no prompts"),
        ("\n  \n", "holds no prompts"),
        ('{"text": "x"}\n', "no text 'prompt' field"),
        ('{"prompt": \n', "not valid JSON"),
    ],
)
def test_bad_prompt_files_one_line(tmp_path, content, words):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(DomainError, match=words):
        read_prompts_file(f)


def test_missing_file_and_unknown_domain(tmp_path):
    with pytest.raises(DomainError, match="does not exist"):
        read_prompts_file(tmp_path / "nope.txt")
    with pytest.raises(DomainError, match="unknown domain 'cooking'"):
        resolve_domains(["cooking"])


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "", "a\\b", "x" * 65])
def test_names_are_not_paths(name):
    with pytest.raises(DomainError):
        check_domain_name(name)


def test_one_rule_for_the_domains_a_run_trains(tmp_path):
    """planned_domains is what resolve_domains trains and what the dashboard shows: the names
    asked, else the domain files' stems, else the built-ins; the data's domain after them,
    alone when nothing else is named."""
    from kd_core.domains import BUILTIN_DOMAINS, planned_domains, resolve_domains

    f = tmp_path / "mine.txt"
    f.write_text("Say hello.\n")
    data = tmp_path / "notes"
    data.mkdir()
    assert planned_domains([]) == list(BUILTIN_DOMAINS) == list(resolve_domains([]))
    assert planned_domains([], [str(f)]) == ["mine"] == list(resolve_domains([], [str(f)]))
    assert planned_domains(["task"], [str(f)]) == ["task"]
    assert planned_domains([], None, str(data)) == ["notes"]
    assert planned_domains([], [str(f)], str(data)) == ["mine", "notes"]
    assert planned_domains(["task"], None, str(tmp_path / "rows.jsonl")) == ["task", "rows"]
