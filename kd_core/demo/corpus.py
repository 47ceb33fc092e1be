"""Deterministic text generator for the demo teacher's training corpus.

The demo teacher is trained from scratch on what this module writes, so the six built-in
domains mean something to it. Two properties matter for showing that distillation helps:

* every domain has its own response shape and the response reuses the prompt's key phrase,
  so a model has to read the prompt to answer well;
* at many positions the text is a *weighted* choice among plausible alternatives. A teacher
  trained on many samples learns those weights as its soft distribution (the "dark knowledge"
  a single sampled answer does not carry), which is what the student can be distilled on.

The phrase tables live in kd_core/demo/data/<domain>.json (options are [text, weight] pairs;
"{name}" slots are filled here); this module is the grammar that strings them together.
Pure stdlib on purpose: it runs in the test suite and on machines without MLX.
"""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

DOMAIN_NAMES: tuple[str, ...] = ("thinking", "task", "action", "reflection", "debug", "memory")

_DATA_DIR = Path(__file__).resolve().parent.parent / "domains" / "data"
_PHRASES_DIR = Path(__file__).resolve().parent / "data"
MIN_WORDS, MAX_WORDS = 25, 70
_MAX_PHRASE_WORDS = 14  # long key phrases are cut so the response stays under MAX_WORDS

Options = Sequence[Sequence[Any]]  # [(text, weight), ...]
Categories = Sequence[tuple[str, Sequence[tuple[str, float]]]]


# --------------------------------------------------------------------------- data files


@cache
def _load_cached(domain: str) -> dict:
    return json.loads((_DATA_DIR / f"{domain}.json").read_text(encoding="utf-8"))


def load_domain_file(domain: str) -> dict:
    """The built-in domain file as a dict: name, description, train, heldout."""
    if domain not in DOMAIN_NAMES:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAIN_NAMES)}")
    # a copy, so a caller that edits the lists cannot corrupt later corpora
    return copy.deepcopy(_load_cached(domain))


def _phrases(name: str) -> dict[str, Any]:
    return json.loads((_PHRASES_DIR / f"{name}.json").read_text(encoding="utf-8"))


def _categories(entries: list[dict[str, Any]]) -> Categories:
    """[{name, keys: [{weight, words}]}] -> [(name, [(keyword, weight), ...])], order kept."""
    return [(e["name"], [(w, g["weight"]) for g in e["keys"] for w in g["words"]]) for e in entries]


_COMMON = _phrases("common")
_THINK = _phrases("thinking")
_TASK = _phrases("task")
_ACTION = _phrases("action")
_REFL = _phrases("reflection")
_DEBUG = _phrases("debug")
_MEM = _phrases("memory")


# --------------------------------------------------------------------------- helpers


def _pick(rng: random.Random, options: Options) -> str:
    """Weighted choice; the weights are the structure a teacher's soft targets should learn."""
    texts = [t for t, _ in options]
    weights = [w for _, w in options]
    return rng.choices(texts, weights=weights)[0]


_STOP = frozenset(_COMMON["stop_words"])
# framing words of the prompt styles: they say nothing about the prompt's subject
_FRAME = frozenset(_COMMON["frame_words"])


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9][A-Za-z0-9'.-]*[A-Za-z0-9]|[A-Za-z0-9]", text)


def _content_words(text: str) -> list[str]:
    """Words that carry the subject: not stopwords, not framing, at least 3 letters or a number."""
    out = []
    for w in _words(text):
        lw = w.lower()
        if lw in _STOP or lw in _FRAME:
            continue
        if len(w) >= 3 or w.isdigit():
            out.append(w)
    return out


def _clip(phrase: str, limit: int = _MAX_PHRASE_WORDS) -> str:
    parts = phrase.split()
    return " ".join(parts[:limit])


def _lower_first(text: str) -> str:
    # "The build failed" -> "the build failed", but keep "SSL ..." and "I ..." as they are
    if text.startswith("A ") or (len(text) > 1 and text[0].isupper() and text[1].islower()):
        return text[0].lower() + text[1:]
    return text


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _strip_end(text: str) -> str:
    return text.strip().rstrip(".?;:").strip()


def _fallback_phrase(prompt: str) -> str:
    """The last few content words: enough to tie a response to an unexpected prompt."""
    words = _content_words(prompt)
    return " ".join(words[-4:]) if words else "the request"


def _category(text: str, table: Categories) -> str:
    """Best-scoring category by keyword hits; ties go to the earlier category in the table.

    Keywords may be phrases ("out of memory"); they match whole words only.
    """
    low = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text.lower())  # keep decimal points ("0.1")
    low = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", low)  # quotes, but not the apostrophe in "user's"
    low = " " + re.sub(r"[^a-z0-9'. ]+", " ", low) + " "
    best, best_score = "default", 0.0
    for name, keys in table:
        score = sum(w for k, w in keys if f" {k} " in low)
        if score > best_score:
            best, best_score = name, score
    return best


def _n_words(parts: Sequence[str]) -> int:
    return sum(len(p.split()) for p in parts)


def _fit(parts: list[tuple[str, bool]], pads: Options, rng: random.Random) -> str:
    """Join parts; drop optional ones (from the end) above MAX_WORDS, pad below MIN_WORDS."""
    kept = list(parts)
    while _n_words([p for p, _ in kept]) > MAX_WORDS:
        idx = max((i for i, (_, opt) in enumerate(kept) if opt), default=None)
        if idx is None:
            break
        del kept[idx]
    texts = [p for p, _ in kept]
    pool = list(pads)
    while _n_words(texts) < MIN_WORDS and pool:
        choice = _pick(rng, pool)
        pool = [o for o in pool if o[0] != choice]  # never the same pad twice
        texts.append(choice)
    return _clean(" ".join(texts))


def _clean(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([.,;:?])", r"\1", text)
    text = text.replace("..", ".").replace(",.", ".").replace("?.", "?")
    return text.encode("ascii", "ignore").decode("ascii")


# --------------------------------------------------------------------------- thinking

_THINK_CATS = _categories(_THINK["categories"])
# (small unit, big unit) -> how many small units one big unit holds
_UNITS: dict[tuple[str, str], int] = {(s, b): n for s, b, n in _THINK["units"]}

_RE_UNIT = re.compile(r"how many (\w+) are in (\d+) (\w+)", re.I)
_RE_DIST = re.compile(
    r"\b(?:a|an|the) (\w+) (?:travels|rides|drives|sails|runs|walks|flies) (\d+) "
    r"(kilometres|miles) per hour for (\d+) hours",
    re.I,
)
_RE_COST = re.compile(r"if one (\w+) costs (\d+) dollars, what do (\d+) of them cost", re.I)
_RE_BETTER = re.compile(
    r"is it better to (.+?) or (.+?)(?: (when|for|on|in|during|if) (.+))?$", re.I
)
_RE_WHY = re.compile(r"^why (?:does|do|is|are) (.+)$", re.I)
_RE_HOW = re.compile(r"^how (?:does|do) (.+)$", re.I)
_RE_HAPPENS = re.compile(r"^what happens (?:when|if) (.+)$", re.I)


def _question(prompt: str) -> str:
    q = prompt.split(":", 1)[1] if re.match(r"\s*think step by step\s*:", prompt, re.I) else prompt
    return _strip_end(q)


def _arith_steps(
    rng: random.Random, kind: str, answer: str, **slots: Any
) -> list[tuple[str, bool]]:
    """Open, two worked steps from the `kind`_step1/2 tables, and the computed answer."""
    t = _THINK
    s1 = _pick(rng, t[f"{kind}_step1"]).format(**slots)
    s2 = _pick(rng, t[f"{kind}_step2"]).format(**slots)
    return [
        (_pick(rng, t["open"]), False),
        (f"{_pick(rng, t['first'])} {s1}.", False),
        (f"{_pick(rng, t['second'])} {s2}.", False),
        (f"{_pick(rng, t['conclusion'])} {answer}.", False),
    ]


def _think_arith(rng: random.Random, q: str) -> list[tuple[str, bool]] | None:
    if m := _RE_UNIT.search(q):
        small, n, big = m.group(1).lower(), int(m.group(2)), m.group(3).lower()
        one = big[:-1] if big.endswith("s") else big
        factor = _UNITS.get((small, one))
        if factor is None:
            return None
        slots = {"one": one, "factor": factor, "small": small, "n": n, "big": big}
        return _arith_steps(rng, "unit", f"{n * factor} {small}", **slots)
    if m := _RE_DIST.search(q):
        who, speed = m.group(1).lower(), int(m.group(2))
        unit, hours = m.group(3).lower(), int(m.group(4))
        slots = {"who": who, "speed": speed, "unit": unit, "hours": hours}
        return _arith_steps(rng, "dist", f"{speed * hours} {unit}", **slots)
    if m := _RE_COST.search(q):
        item, price, n = m.group(1).lower(), int(m.group(2)), int(m.group(3))
        slots = {"item": item, "price": price, "n": n}
        return _arith_steps(rng, "cost", f"{n * price} dollars", **slots)
    return None


def _respond_thinking(prompt: str, rng: random.Random) -> str:
    t = _THINK
    q = _question(prompt)
    parts = _think_arith(rng, q)
    if parts is None:
        cat = _category(q, _THINK_CATS)
        open_, first, second = (
            _pick(rng, t["open"]),
            _pick(rng, t["first"]),
            _pick(rng, t["second"]),
        )
        third, concl = _pick(rng, t["third"]), _pick(rng, t["conclusion"])
        mech, factor = _pick(rng, t["mechanism"][cat]), _pick(rng, t["factor"][cat])
        check = _pick(rng, t["check"])
        if m := _RE_BETTER.search(q):
            a, b = _clip(m.group(1), 8), _clip(m.group(2), 8)
            ctx = f"{m.group(3)} {m.group(4)}" if m.group(4) else ""
            pro_a, pro_b = _pick(rng, t["better_pro_a"]), _pick(rng, t["better_pro_b"])
            s3 = (
                f"consider the situation: {_clip(ctx, 8)}" if ctx else _pick(rng, t["better_weigh"])
            )
            lean = _pick(rng, t["better_lean"]).format(a=a)
            parts = [
                (open_, False),
                (f"{first} the first choice is to {a}, which {pro_a}.", False),
                (f"{second} the other choice, {b}, {pro_b}.", False),
                (f"{third} {s3}.", True),
                (f"{concl} that it depends, but {lean}.", False),
            ]
        else:
            m_why, m_how, m_hap = _RE_WHY.search(q), _RE_HOW.search(q), _RE_HAPPENS.search(q)
            if m_why:
                c = _clip(m_why.group(1))
                s1 = _pick(rng, t["why_step1"]).format(c=c)
                answer = f"{concl} that {mech} makes {c}."
            elif m_how:
                c = _clip(m_how.group(1))
                s1 = _pick(rng, t["how_step1"]).format(c=c)
                answer = f"{concl} that {mech} lets {c}."
            elif m_hap:
                c = _clip(m_hap.group(1))
                s1 = _pick(rng, t["happens_step1"]).format(c=c)
                answer = f"{concl} that when {c}, {_pick(rng, t['effect'][cat])}."
            else:
                c = _clip(q, 10) if len(q.split()) <= 10 else _fallback_phrase(q)
                s1 = _pick(rng, t["other_step1"]).format(c=c)
                answer = f"{concl} that {mech} explains {c}."
            parts = [(open_, False), (f"{first} {s1}.", False), (f"{second} {factor}.", False)]
            if rng.random() < 0.8:  # a third step is usual, not guaranteed
                parts.append((f"{third} {check}.", True))
            parts.append((answer, False))
    return _fit(parts, t["pads"], rng)


# --------------------------------------------------------------------------- task

_TASK_CATS = _categories(_TASK["categories"])


def _respond_task(prompt: str, rng: random.Random) -> str:
    t = _TASK
    m = re.search(r"'([^']+)'", prompt)
    x = _clip(m.group(1).strip()) if m else _fallback_phrase(prompt)
    cat = _category(x, _TASK_CATS)
    opener = _pick(rng, t["open"])
    steps: list[tuple[str, bool]] = [(_pick(rng, t["first"]).format(x=x), False)]
    for step in t["steps"][cat]:
        # optional steps appear often but not always: step count is part of the learnable shape
        if step["optional"] and rng.random() < 0.35:
            continue
        steps.append((_pick(rng, step["options"]), step["optional"]))
    steps.append((_pick(rng, t["last"]), False))

    def render(items: list[tuple[str, bool]]) -> str:
        body = " ".join(f"{i}. {s}" for i, (s, _) in enumerate(items, 1))
        return f"{opener} {body}" if opener else body

    while len(render(steps).split()) > MAX_WORDS and any(opt for _, opt in steps):
        idx = max(i for i, (_, opt) in enumerate(steps) if opt)
        del steps[idx]
    pool = list(t["pads"])
    while len(render(steps).split()) < MIN_WORDS and pool:
        pad = _pick(rng, pool)
        pool = [o for o in pool if o[0] != pad]
        steps.insert(len(steps) - 1, (pad, True))
    return _clean(render(steps))


# --------------------------------------------------------------------------- action

_ACTION_CATS = _categories(_ACTION["categories"])
# which tool answers a user request: several are plausible, with unequal weights
_TOOL_CATS = _categories(_ACTION["tool_categories"])
_RE_REQUEST = re.compile(r"\b(?:asks|asked|wants)\s+(?:for\s+|to\s+)?(.+)$", re.I)


def _situation(prompt: str) -> str:
    """The prompt without its closing question: the situation the action must answer."""
    sentences = re.split(r"(?<=[.?])\s+", prompt.strip())
    if len(sentences) > 1 and sentences[-1].endswith("?"):
        sentences = sentences[:-1]
    return _strip_end(" ".join(sentences))


def _respond_action(prompt: str, rng: random.Random) -> str:
    t = _ACTION
    sit = _situation(prompt) or _fallback_phrase(prompt)
    s = _clip(_lower_first(sit), 16)
    cat = _category(prompt, _ACTION_CATS)
    if cat == "tool":
        req = _RE_REQUEST.search(sit)
        request = _clip(req.group(1), 10) if req else _fallback_phrase(sit)
        tool = _pick(rng, t["tools"][_category(sit, _TOOL_CATS)])
        act = _pick(rng, t["tool_call"]).format(tool=tool, request=request)
        why = _pick(rng, t["tool_why"]).format(tool=tool)
        then = _pick(rng, t["tool_then"])
    else:
        slots = t["act"][cat]
        act, why, then = (_pick(rng, slots[k]) for k in ("next", "reason", "then"))
    then_label = _pick(rng, t["then_label"])
    parts = [
        (f"Next action: {act}.", False),
        (f"Reason: {s}, so {why}.", False),
        (f"{then_label} {then}.", True),
    ]
    return _fit(parts, t["pads"], rng)


# --------------------------------------------------------------------------- reflection

_REFL_CATS = _categories(_REFL["categories"])


def _respond_reflection(prompt: str, rng: random.Random) -> str:
    t = _REFL
    body = prompt.split(":", 1)[1] if ":" in prompt else prompt
    outcome = _clip(_lower_first(_strip_end(body)), 16) or _fallback_phrase(prompt)
    cat = _category(outcome, _REFL_CATS)
    if cat == "personal":
        # a personal success ("I learned enough ...") is still a success
        pos = _category(outcome, _REFL_CATS[:1]) == "success"
        cat = "success" if pos else "personal"
    well, cause, change = (_pick(rng, t["slots"][cat][k]) for k in ("well", "cause", "change"))
    positive = cat == "success"
    if positive:
        because = _pick(rng, t["because_success"])
        parts = [
            (f"What went well: {outcome}, {because} {cause}.", False),
            (f"Why it worked: {well}.", True),
            (f"What to change: {change}.", False),
        ]
    else:
        because = _pick(rng, t["because_failure"])
        parts = [
            (f"What went well: {well}.", False),
            (f"What went wrong: {outcome}, {because} {cause}.", False),
            (f"What to change: {change}.", False),
        ]
    if rng.random() < 0.6:
        parts.append((_pick(rng, t["lesson_success" if positive else "lesson_failure"]), True))
    return _fit(parts, t["pads"], rng)


# --------------------------------------------------------------------------- debug

_DEBUG_CATS = _categories(_DEBUG["categories"])


def _respond_debug(prompt: str, rng: random.Random) -> str:
    t = _DEBUG
    body = prompt.split(":", 1)[1] if ":" in prompt else prompt
    symptom = _clip(_lower_first(_strip_end(body)), 16) or _fallback_phrase(prompt)
    slots = t["slots"][_category(symptom, _DEBUG_CATS)]
    label = _pick(rng, t["label"])
    repro = _pick(rng, t["repro"]).format(x=symptom)
    parts = [
        (f"{label} {_pick(rng, slots['cause'])}.", False),
        (f"Check: {repro}, then {_pick(rng, slots['check'])}.", False),
        (f"Fix: {_pick(rng, slots['fix'])}.", False),
    ]
    if rng.random() < 0.55:
        parts.append((_pick(rng, t["test"]), True))
    return _fit(parts, t["pads"], rng)


# --------------------------------------------------------------------------- memory

_MEM_CATS = _categories(_MEM["categories"])
_VERBISH = frozenset(_MEM["verbish"])
_DATE_WORDS = frozenset(_MEM["date_words"])
_RE_MEM = [
    re.compile(r"remember that (.+?)\.\s*what should be stored", re.I),
    re.compile(r"^[^:]*:\s*(.+)$"),
]


def _memory_fact(prompt: str) -> str:
    for rx in _RE_MEM:
        m = rx.search(prompt.strip())
        if m:
            return _strip_end(m.group(1))
    return _strip_end(prompt)


def _first_person(fact: str) -> str:
    # store facts about "I"/"my" from the assistant's point of view
    fact = re.sub(r"^I am\b", "the user is", fact)
    fact = re.sub(r"^I\b", "the user", fact)
    fact = re.sub(r"^[Mm]y\b", "the user's", fact)
    return fact


def _respond_memory(prompt: str, rng: random.Random) -> str:
    t = _MEM
    fact = _clip(_first_person(_memory_fact(prompt)), 16) or _fallback_phrase(prompt)
    cat = _category(fact, _MEM_CATS)
    who = next((w for w in _words(fact)[:2] if w[:1].isupper() and w.lower() not in _STOP), None)
    who = who or ("the user" if fact.startswith("the user") else "the team")
    nouns = [
        w
        for w in _content_words(fact)
        if w.lower() not in _VERBISH and not w.isdigit() and w != who and w.lower() != "user's"
    ]
    # the recall key is what the fact is about, so dates ("Monday", "July") are left out of it
    subject = [w for w in nouns if w.lower() not in _DATE_WORDS and not w[:1].isdigit()]
    key = " ".join(subject[:2]) if subject else "topic"
    tags: list[str] = []
    for w in nouns[:4]:
        if w not in tags and rng.random() < 0.8:  # most, not all, content words become tags
            tags.append(w)
    if who not in ("the user", "the team") and who not in tags:
        tags.insert(0, who)
    tags = tags[:3] or [key.split()[0]]
    tags.append(_pick(rng, t["tag"][cat]))
    recall = _pick(rng, t["recall"][cat]).format(k=key, who=who)
    keep = _pick(rng, t["keep"].get(cat, t["keep"]["default"]))
    parts = [
        (f"Store: {_upper_first(fact)}.", False),
        (f"Tags: {', '.join(tags)}.", False),
        (f"Recall when: {recall}.", False),
        (f"Priority: {_pick(rng, t['priority'][cat])}.", True),
        (f"Keep {keep}.", True),
    ]
    if rng.random() < 0.3:
        parts.pop()  # "Keep ..." is a habit, not a rule
    return _fit(parts, t["pads"], rng)


# --------------------------------------------------------------------------- public API

_RESPONDERS: dict[str, Callable[[str, random.Random], str]] = {
    "thinking": _respond_thinking,
    "task": _respond_task,
    "action": _respond_action,
    "reflection": _respond_reflection,
    "debug": _respond_debug,
    "memory": _respond_memory,
}


def respond(domain: str, prompt: str, rng: random.Random) -> str:
    """One plausible response of a 'knowledgeable assistant' to prompt, 25-70 words."""
    if domain not in _RESPONDERS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAIN_NAMES)}")
    return _RESPONDERS[domain](prompt, rng)


# --------------------------------------------------------------------------- extra prompts
# Fresh prompts in each domain's style: a template with slot fillers from the "extra" tables.

_CITIES, _DAYS, _PEOPLE = _COMMON["cities"], _COMMON["days"], _COMMON["people"]


def _extra_thinking(rng: random.Random) -> str:
    x = _THINK["extra"]
    kind = _pick(rng, x["kinds"])
    t = "Think step by step: "
    if kind == "unit":
        (small, big), n = rng.choice(sorted(_UNITS)), rng.randint(2, 12)
        return f"{t}how many {small} are in {n} {big}s?"
    if kind == "dist":
        who, verb = rng.choice(x["movers"])
        speed = rng.choice(x["speeds"])
        hours = rng.randint(2, 6)
        return (
            f"{t}a {who} {verb} {speed} kilometres per hour for {hours} hours; how far does it go?"
        )
    if kind == "cost":
        item, price, n = rng.choice(x["items"]), rng.randint(2, 20), rng.randint(2, 12)
        return f"{t}if one {item} costs {price} dollars, what do {n} of them cost?"
    if kind in ("why", "how"):
        return f"{t}{kind} {rng.choice(x[kind])}?"
    if kind == "happens":
        return f"{t}what happens when {rng.choice(x['happens'])}?"
    a, b = rng.choice(x["choices"])
    return f"{t}is it better to {a} or {b} {rng.choice(x['contexts'])}?"


def _extra_task(rng: random.Random) -> str:
    x = _TASK["extra"]
    task = rng.choice(x["tasks"])
    what = f"{rng.choice(task['verbs'])} {rng.choice(task['objects'])}"
    return _pick(rng, x["frames"]).format(what)


def _x_tool_request(rng: random.Random) -> str:
    """A user request that one tool answers; the kind is chosen first, then its slots."""
    x = _ACTION["extra"]
    kind = rng.randrange(8)
    if kind == 0:
        return f"for the weather in {rng.choice(_CITIES)} on {rng.choice(_DAYS)}"
    if kind == 1:
        return f"to convert {rng.choice(x['amounts'])} dollars into euros"
    if kind == 2:
        return f"to book a table for {rng.randint(2, 8)} people on {rng.choice(_DAYS)}"
    if kind == 3:
        place = rng.choice(x["places"])
        return f"for directions to the {place} in {rng.choice(_CITIES)}"
    if kind == 4:
        return f"to find all files that mention the {rng.choice(x['file_topics'])}"
    if kind == 5:
        doc = rng.choice(x["documents"])
        return f"to email the {doc} to the {rng.choice(x['teams'])}"
    if kind == 6:
        return f"for the latest news about {rng.choice(x['news_topics'])}"
    who = rng.choice(x["callees"])
    return f"to schedule a call with {who} on {rng.choice(_DAYS)}"


def _extra_action(rng: random.Random) -> str:
    x = _ACTION["extra"]
    q = _pick(rng, x["question"])
    kind = _pick(rng, x["kinds"])
    if kind == "fail":
        return f"The {rng.choice(x['components'])} failed with {rng.choice(x['errors'])}.{q}"
    if kind == "tool":
        return f"The user asks {_x_tool_request(rng)}. Which tool should be called next?"
    if kind == "down":
        svc = rng.choice(x["services"])
        verb = rng.choice(x["service_verbs"])
        return f"The {svc} is down and customers cannot {verb}.{q}"
    if kind == "data":
        ds = rng.choice(x["datasets"])
        prob = rng.choice(x["data_problems"])
        return f"The {ds} has {prob}.{q}"
    return f"The user request about {rng.choice(x['vague_topics'])} is vague.{q}"


def _extra_reflection(rng: random.Random) -> str:
    x = _REFL["extra"]
    outcome = f"the {rng.choice(x['projects'])} {rng.choice(x['outcomes'])}"
    return _pick(rng, x["frames"]).format(outcome)


def _extra_debug(rng: random.Random) -> str:
    x = _DEBUG["extra"]
    symptom = f"the {rng.choice(x['code_parts'])} {rng.choice(x['symptoms'])}"
    return _pick(rng, x["frames"]).format(symptom)


def _extra_memory(rng: random.Random) -> str:
    x = _MEM["extra"]
    if rng.random() < 0.75:
        fact = f"{rng.choice(_PEOPLE)} {rng.choice(x['person_facts'])}"
    else:
        fact = f"the {rng.choice(x['events'])} moved to {rng.choice([*_DAYS, 'next week'])}"
    return _pick(rng, x["frames"]).format(fact)


_EXTRA: dict[str, Callable[[random.Random], str]] = {
    "thinking": _extra_thinking,
    "task": _extra_task,
    "action": _extra_action,
    "reflection": _extra_reflection,
    "debug": _extra_debug,
    "memory": _extra_memory,
}


def extra_prompts(domain: str, rng: random.Random, n: int, exclude: set[str]) -> list[str]:
    """n distinct template prompts not already among the domain files' prompts."""
    out: list[str] = []
    seen = set(exclude)
    # bounded: a template set with fewer than n combinations just yields fewer prompts
    for _ in range(n * 50):
        if len(out) >= n:
            break
        p = _EXTRA[domain](rng)
        if p.lower() not in seen:
            seen.add(p.lower())
            out.append(p)
    return out


def build_corpus(
    seed: int = 0, samples_per_prompt: int = 6, extra_prompts_per_domain: int = 200
) -> list[tuple[str, str, str]]:
    """(domain, prompt, response) triples: every train AND heldout prompt of every domain.

    Each domain-file prompt gets `samples_per_prompt` responses drawn with
    random.Random(seed)-derived rngs; then `extra_prompts_per_domain` freshly generated prompts
    per domain (templates with slot fillers, same style as the json prompts) get one response
    each. Deterministic given seed.
    """
    master = random.Random(seed)

    def sample_rng() -> random.Random:
        # one rng per response: a sample does not depend on how many came before it
        return random.Random(master.getrandbits(64))

    files = {d: load_domain_file(d) for d in DOMAIN_NAMES}
    exclude = {p.lower() for f in files.values() for p in f["train"] + f["heldout"]}
    out: list[tuple[str, str, str]] = []
    for domain in DOMAIN_NAMES:
        for prompt in files[domain]["train"] + files[domain]["heldout"]:
            for _ in range(samples_per_prompt):
                out.append((domain, prompt, respond(domain, prompt, sample_rng())))
    for domain in DOMAIN_NAMES:
        gen = random.Random(master.getrandbits(64))
        for prompt in extra_prompts(domain, gen, extra_prompts_per_domain, exclude):
            out.append((domain, prompt, respond(domain, prompt, sample_rng())))
    return out


# --------------------------------------------------------------------------- the student's text


def _span(words: list[str], rng: random.Random, lo: int = 2, hi: int = 10) -> str:
    n = rng.randint(lo, min(hi, len(words)))
    i = rng.randint(0, len(words) - n)
    return " ".join(words[i : i + n])


def echo_response(text: str, rng: random.Random) -> str:
    """Two to four spans of `text` (from anywhere, in any order) in plain frames."""
    words = re.sub(r"[.?;:,']", "", text).split()
    if len(words) < 3:
        return text
    parts = []
    for _ in range(rng.randint(2, 4)):
        frame = _pick(rng, _COMMON["echo_frames"])
        parts.append(frame.format(s=_span(words, rng), t=_span(words, rng)))
    return " ".join(parts)


def echo_corpus(triples: list[tuple[str, str, str]], seed: int = 0) -> list[tuple[str, str, str]]:
    """The demo student's own training text: it learns the tokens and to copy from the prompt
    (what a small pretrained model brings), not the domains' answers.

    For every training triple of `triples` (held-out prompts left out) two examples whose
    answer only restates spans of the input: the prompt, and one sentence of the response as
    the input. A student trained on this writes the demo words but not the demo language (its
    valid-3-gram share stays low), so distillation has the domains' distributions to teach;
    without the copying, a tiny student cannot follow a held-out prompt's key phrase whatever
    it is taught (measured: most of its held-out KL sat on those positions).
    """
    rng = random.Random(seed + 99)
    held = {p for d in DOMAIN_NAMES for p in load_domain_file(d)["heldout"]}
    out: list[tuple[str, str, str]] = []
    for domain, prompt, response in triples:
        if prompt in held:
            continue
        out.append((domain, prompt, echo_response(prompt, rng)))
        sentences = [s.strip() for s in re.split(r"(?<=[.:])\s+", response) if len(s.split()) >= 3]
        if sentences:
            sentence = rng.choice(sentences)
            out.append((domain, sentence, echo_response(sentence, rng)))
    return out
