"""Deterministic text generator for the demo teacher's training corpus.

The demo teacher is trained from scratch on what this module writes, so the six built-in
domains mean something to it. Two properties matter for showing that distillation helps:

* every domain has its own response shape and the response reuses the prompt's key phrase,
  so a model has to read the prompt to answer well;
* at many positions the text is a *weighted* choice among plausible alternatives. A teacher
  trained on many samples learns those weights as its soft distribution (the "dark knowledge"
  a single sampled answer does not carry), which is what the student can be distilled on.

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

DOMAIN_NAMES: tuple[str, ...] = ("thinking", "task", "action", "reflection", "debug", "memory")

_DATA_DIR = Path(__file__).resolve().parent.parent / "domains" / "data"
MIN_WORDS, MAX_WORDS = 25, 70
_MAX_PHRASE_WORDS = 14  # long key phrases are cut so the response stays under MAX_WORDS

Options = Sequence[tuple[str, float]]


# --------------------------------------------------------------------------- domain files


@cache
def _load_cached(domain: str) -> dict:
    return json.loads((_DATA_DIR / f"{domain}.json").read_text(encoding="utf-8"))


def load_domain_file(domain: str) -> dict:
    """The built-in domain file as a dict: name, description, train, heldout."""
    if domain not in DOMAIN_NAMES:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAIN_NAMES)}")
    # a copy, so a caller that edits the lists cannot corrupt later corpora
    return copy.deepcopy(_load_cached(domain))


# --------------------------------------------------------------------------- helpers


def _pick(rng: random.Random, options: Options) -> str:
    """Weighted choice; the weights are the structure a teacher's soft targets should learn."""
    texts = [t for t, _ in options]
    weights = [w for _, w in options]
    return rng.choices(texts, weights=weights)[0]


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STOP = _wordset("""
a an the of to in on at for with and or but is are was were be been being by it its this that
these those what why how does do did done when which who whom whose should would could can will
next from as than into after before about all some any every each one two no not so if then
there their they them his her she he we you your our my me i am has have had get gets got
very much many more most less same other others just only also too out up down off over under
again still yet while until per instead way
""")

# framing words of the prompt styles: they say nothing about the prompt's subject
_FRAME = _wordset("""
think step steps break task plan list needed finish action agent tool called reflect outcome
happened look back result say change debug bug find likely remember stored store fact later
summarise note memory
""")


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


def _category(text: str, table: Sequence[tuple[str, Sequence[tuple[str, float]]]]) -> str:
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


def _kw(spec: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """Keyword table entry: "a, b, c" -> [("a", w), ("b", w), ("c", w)]."""
    return [(k.strip(), weight) for k in spec.split(",") if k.strip()]


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

_OPEN_THINK: Options = [
    ("Let me think step by step.", 7),
    ("Let us reason step by step.", 2),
    ("Thinking step by step:", 1),
]
_FIRST: Options = [("First,", 6), ("To begin,", 3), ("Initially,", 1)]
_SECOND: Options = [("Second,", 55), ("Next,", 35), ("Then,", 10)]
_THIRD: Options = [("Third,", 5), ("Finally,", 35), ("After that,", 15)]
_CONCL: Options = [
    ("So the answer is", 6),
    ("Therefore, the answer is", 25),
    ("In short, the answer is", 15),
]

# keyword -> category of mechanism; the mechanism a question gets is itself a weighted choice
_THINK_CATS: list[tuple[str, list[tuple[str, float]]]] = [
    ("density", _kw("float, floats, sink, boat, boats, afloat, buoyancy", weight=2)),
    (
        "heat",
        _kw(
            "cold, colder, warm, hot, heat, melt, boil, boiling, freeze, "
            "freezer, cool, fridge, temperature, thermostat, refrigerator, "
            "microwave, stale, fresh, milk, battery"
        ),
    ),
    (
        "light",
        _kw("sky, blue, colour, color, green, light, lightning, thunder, solar, sunlight, shine"),
    ),
    (
        "forces",
        _kw("spinning, bicycle, balanced, upright, fall, falls, roll, orbit, top, balance, heavy"),
    ),
    (
        "life",
        _kw(
            "plants, plant, bees, birds, cats, animals, body, vaccines, "
            "infection, yawn, hive, leaves, grow, trees"
        ),
    ),
    (
        "money",
        _kw(
            "prices, price, demand, supply, store, shop, shops, customers, "
            "money, interest, savings, debt, rent, buy, sales, shipping, "
            "dollars, rates, flat"
        ),
    ),
    (
        "computing",
        _kw(
            "cache, code, server, servers, database, index, queries, program, "
            "memory, search, engine, queue, website, file, files, version, "
            "traffic, requests, web, load, balancers, jobs, results, updates, "
            "global"
        ),
    ),
    (
        "people",
        _kw(
            "team, teams, people, engineer, review, hire, study, exam, tests, "
            "juniors, startup, work, bugs, features, launch"
        ),
    ),
]

_MECH: dict[str, Options] = {
    "density": [
        ("a difference in density", 6),
        ("the upward push of the water", 3),
        ("the weight of the water pushed aside", 1),
    ],
    "heat": [
        ("the flow of heat from warm to cold", 5),
        ("a change in temperature", 3),
        ("the way energy moves between materials", 2),
    ],
    "light": [
        ("the way light is scattered or absorbed", 5),
        ("the mix of colours that reaches the eye", 3),
        ("the energy carried by light", 2),
    ],
    "forces": [
        ("the balance of forces", 5),
        ("momentum that resists change", 3),
        ("gravity acting on the centre of mass", 2),
    ],
    "life": [
        ("an advantage for survival", 4),
        ("a signal inside the body or the group", 3),
        ("a habit shaped by evolution", 3),
    ],
    "money": [
        ("the balance of supply and demand", 5),
        ("a simple money incentive", 3),
        ("how buyers react to cost", 2),
    ],
    "computing": [
        ("a trade-off between speed and memory", 4),
        ("work that is saved and reused", 3),
        ("a limit on shared resources", 3),
    ],
    "people": [
        ("the cost of communication between people", 4),
        ("how practice and feedback build skill", 3),
        ("clear ownership of the work", 3),
    ],
    "default": [
        ("a simple underlying cause", 5),
        ("a chain of small effects", 3),
        ("one main factor", 2),
    ],
}

_FACTOR: dict[str, Options] = {
    "density": [
        ("compare how heavy each material is for its size", 5),
        ("look at how much space the object takes up", 3),
        ("think about the water that is pushed aside", 2),
    ],
    "heat": [
        ("notice where heat moves and how fast", 5),
        ("compare the temperatures before and after", 3),
        ("ask which material holds or passes heat better", 2),
    ],
    "light": [
        ("recall that sunlight mixes many colours", 5),
        ("ask which colours are absorbed and which bounce back", 3),
        ("compare how fast light and sound travel", 2),
    ],
    "forces": [
        ("list the forces that act on the object", 5),
        ("notice how motion keeps the object steady", 3),
        ("find where the weight sits", 2),
    ],
    "life": [
        ("ask how this helps the living thing survive", 5),
        ("look for the signal that starts the behaviour", 3),
        ("compare it with similar animals or plants", 2),
    ],
    "money": [
        ("ask how buyers and sellers react", 5),
        ("follow where the money goes", 3),
        ("compare the cost now with the cost later", 2),
    ],
    "computing": [
        ("ask which resource is limited, time or memory", 5),
        ("follow one request through the system", 3),
        ("count how much work is repeated", 2),
    ],
    "people": [
        ("count how many people must agree", 5),
        ("ask how often the work gets feedback", 3),
        ("look at who owns each decision", 2),
    ],
    "default": [
        ("list the facts we know", 5),
        ("look for the main cause", 3),
        ("compare it with a similar case", 2),
    ],
}

_EFFECT: dict[str, Options] = {
    "density": [
        ("the lighter material stays on top", 5),
        ("the object settles where the forces balance", 3),
        ("the water pushes back with equal weight", 2),
    ],
    "heat": [
        ("heat spreads until the temperatures even out", 5),
        ("the material warms or cools and reacts", 3),
        ("energy moves from the warm part to the cold part", 2),
    ],
    "light": [
        ("the light changes colour or strength", 5),
        ("some colours are lost and others remain", 5),
    ],
    "forces": [
        ("the forces shift and the object moves to a new balance", 5),
        ("the motion changes step by step", 5),
    ],
    "life": [
        ("the living thing reacts to protect itself", 5),
        ("growth slows until conditions improve", 3),
        ("the body adapts over time", 2),
    ],
    "money": [
        ("people change what they buy and prices adjust", 5),
        ("demand shifts and sellers respond", 3),
        ("borrowing and spending slow down", 2),
    ],
    "computing": [
        ("requests wait in line and errors grow", 4),
        ("the system slows down or starts to fail", 4),
        ("the shared resource runs out", 2),
    ],
    "people": [
        ("quality slips and problems surface later", 5),
        ("work piles up and people lose track", 3),
        ("trust and speed both drop", 2),
    ],
    "default": [
        ("the system moves to a new balance", 5),
        ("a chain of small effects follows", 3),
        ("the change spreads to nearby parts", 2),
    ],
}

_CHECK: Options = [
    ("check that the same cause explains similar cases", 5),
    ("rule out explanations that do not fit", 3),
    ("test the idea against a simple example", 2),
]
_PAD_THINK: Options = [
    ("This fits what we already know.", 4),
    ("Each step follows from the one before.", 3),
    ("A quick check agrees with this.", 3),
]

# (small unit, big unit) -> how many small units one big unit holds
_UNITS: dict[tuple[str, str], int] = {
    ("seconds", "minute"): 60,
    ("minutes", "hour"): 60,
    ("hours", "day"): 24,
    ("days", "week"): 7,
    ("months", "year"): 12,
    ("weeks", "year"): 52,
    ("grams", "kilogram"): 1000,
    ("metres", "kilometre"): 1000,
    ("centimetres", "metre"): 100,
    ("minutes", "day"): 1440,
    ("seconds", "hour"): 3600,
    ("days", "year"): 365,
}

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


def _think_arith(rng: random.Random, q: str) -> list[tuple[str, bool]] | None:
    m = _RE_UNIT.search(q)
    if m:
        small, n, big = m.group(1).lower(), int(m.group(2)), m.group(3).lower()
        one = big[:-1] if big.endswith("s") else big
        factor = _UNITS.get((small, one))
        if factor is None:
            return None
        s1 = _pick(
            rng, [(f"one {one} has {factor} {small}", 6), (f"one {one} equals {factor} {small}", 4)]
        )
        s2 = _pick(
            rng,
            [
                (f"{n} {big} have {n} times {factor} {small}", 5),
                (f"multiply {n} by {factor}", 4),
                (f"we need {n} lots of {factor}", 1),
            ],
        )
        return [
            (_pick(rng, _OPEN_THINK), False),
            (f"{_pick(rng, _FIRST)} {s1}.", False),
            (f"{_pick(rng, _SECOND)} {s2}.", False),
            (f"{_pick(rng, _CONCL)} {n * factor} {small}.", False),
        ]
    m = _RE_DIST.search(q)
    if m:
        who, speed, unit, hours = (
            m.group(1).lower(),
            int(m.group(2)),
            m.group(3).lower(),
            int(m.group(4)),
        )
        s1 = _pick(
            rng,
            [
                (f"the {who} covers {speed} {unit} each hour", 6),
                (f"the speed of the {who} is {speed} {unit} per hour", 4),
            ],
        )
        s2 = _pick(
            rng,
            [
                (f"over {hours} hours that is {hours} times {speed}", 5),
                (f"distance is speed times time, so multiply {speed} by {hours}", 5),
            ],
        )
        return [
            (_pick(rng, _OPEN_THINK), False),
            (f"{_pick(rng, _FIRST)} {s1}.", False),
            (f"{_pick(rng, _SECOND)} {s2}.", False),
            (f"{_pick(rng, _CONCL)} {speed * hours} {unit}.", False),
        ]
    m = _RE_COST.search(q)
    if m:
        item, price, n = m.group(1).lower(), int(m.group(2)), int(m.group(3))
        s1 = _pick(
            rng,
            [
                (f"one {item} costs {price} dollars", 6),
                (f"the price of one {item} is {price} dollars", 4),
            ],
        )
        s2 = _pick(
            rng,
            [(f"{n} of them cost {n} times {price} dollars", 5), (f"multiply {price} by {n}", 5)],
        )
        return [
            (_pick(rng, _OPEN_THINK), False),
            (f"{_pick(rng, _FIRST)} {s1}.", False),
            (f"{_pick(rng, _SECOND)} {s2}.", False),
            (f"{_pick(rng, _CONCL)} {n * price} dollars.", False),
        ]
    return None


def _respond_thinking(prompt: str, rng: random.Random) -> str:
    q = _question(prompt)
    parts = _think_arith(rng, q)
    if parts is None:
        cat = _category(q, _THINK_CATS)
        open_, first, second = _pick(rng, _OPEN_THINK), _pick(rng, _FIRST), _pick(rng, _SECOND)
        third, concl = _pick(rng, _THIRD), _pick(rng, _CONCL)
        mech, factor = _pick(rng, _MECH[cat]), _pick(rng, _FACTOR[cat])
        check = _pick(rng, _CHECK)
        if m := _RE_BETTER.search(q):
            a, b = _clip(m.group(1), 8), _clip(m.group(2), 8)
            ctx = f"{m.group(3)} {m.group(4)}" if m.group(4) else ""
            pro_a = _pick(
                rng,
                [
                    ("is usually safer and easier to undo", 4),
                    ("costs less at the start", 3),
                    ("gives quick results", 3),
                ],
            )
            pro_b = _pick(
                rng,
                [
                    ("can pay off more over time", 4),
                    ("needs more effort but scales better", 3),
                    ("keeps more options open", 3),
                ],
            )
            s3 = (
                f"consider the situation: {_clip(ctx, 8)}"
                if ctx
                else _pick(
                    rng,
                    [
                        ("weigh the time, cost and risk of each choice", 6),
                        ("ask which choice is easier to change later", 4),
                    ],
                )
            )
            lean = _pick(
                rng,
                [
                    (f"it is usually better to {a}", 5),
                    ("the other choice often wins in the long run", 3),
                    ("a mix of both is often best", 2),
                ],
            )
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
                s1 = _pick(
                    rng,
                    [
                        (f"ask what would make {c}", 5),
                        (f"look for the cause that could make {c}", 3),
                        (f"find the factor that would make {c}", 2),
                    ],
                )
                answer = f"{concl} that {mech} makes {c}."
            elif m_how:
                c = _clip(m_how.group(1))
                s1 = _pick(
                    rng,
                    [
                        (f"list the parts that let {c}", 5),
                        (f"ask what lets {c}", 3),
                        (f"picture the process that lets {c}", 2),
                    ],
                )
                answer = f"{concl} that {mech} lets {c}."
            elif m_hap:
                c = _clip(m_hap.group(1))
                s1 = _pick(
                    rng,
                    [
                        (f"picture the moment when {c}", 5),
                        (f"describe the state just before {c}", 3),
                        (f"ask what changes when {c}", 2),
                    ],
                )
                answer = f"{concl} that when {c}, {_pick(rng, _EFFECT[cat])}."
            else:
                c = _clip(q, 10) if len(q.split()) <= 10 else _fallback_phrase(q)
                s1 = _pick(
                    rng,
                    [(f"restate the question about {c}", 5), (f"list what we know about {c}", 5)],
                )
                answer = f"{concl} that {mech} explains {c}."
            parts = [(open_, False), (f"{first} {s1}.", False), (f"{second} {factor}.", False)]
            if rng.random() < 0.8:  # a third step is usual, not guaranteed
                parts.append((f"{third} {check}.", True))
            parts.append((answer, False))
    return _fit(parts, _PAD_THINK, rng)


# --------------------------------------------------------------------------- task

_TASK_CATS: list[tuple[str, list[tuple[str, float]]]] = [
    (
        "learning",
        _kw(
            "learn, study, exam, interview, train, practise, practice, cook, "
            "guitar, piano, typing, chess, speaking, analysis"
        ),
    ),
    (
        "writing",
        _kw(
            "write, draft, report, post, guide, slides, review, paper, letter, "
            "document, translate, press, newsletter, handbook, proposal, notes, "
            "edit, case, blog"
        ),
    ),
    (
        "event",
        _kw(
            "party, offsite, event, meeting, wedding, workshop, visit, charity, "
            "dinner, lunch, hackathon, demo"
        ),
    ),
    (
        "data",
        _kw(
            "database, records, spreadsheet, log, logs, catalogue, data, "
            "exports, export, contact, lists, accounts, dashboard, backups, "
            "photo, library, table, history, tickets, archive, invoice, migrate, "
            "duplicate"
        ),
    ),
    (
        "software",
        _kw(
            "deploy, release, app, website, login, python, service, integration, "
            "test, tests, unit, parser, suite, mode, page, server, api, "
            "monitoring, search, password, code, web, upgrade, flaky"
        ),
    ),
    (
        "business",
        _kw(
            "hire, shop, survey, costs, coffee, loan, customers, accountant, "
            "designer, bakery, studio, game, consulting, course, launch, grow, "
            "promote, business"
        ),
    ),
    (
        "home",
        _kw(
            "move, flat, garage, paint, meals, pack, trip, office, tap, garden, "
            "dog, house, kitchen, bedroom, room, shed, attic, guests, building, "
            "clean"
        ),
    ),
]

_TASK_FIRST: Options = [
    ("Define the goal: {x}, and agree what done looks like.", 5),
    ("Write down what it means to {x} successfully.", 3),
    ("Clarify the scope before you {x}.", 2),
]

_TASK_STEPS: dict[str, list[tuple[Options, bool]]] = {
    "data": [
        (
            [
                ("Back up the current data first.", 6),
                ("Make a full backup before changing anything.", 3),
                ("Export a safe copy of the data.", 1),
            ],
            False,
        ),
        (
            [
                ("Write and test the change on a small sample.", 5),
                ("Run the change on a copy of the data.", 3),
                ("Try a dry run on test data.", 2),
            ],
            False,
        ),
        (
            [
                ("Run the full change and watch for errors.", 5),
                ("Apply the change in batches and log progress.", 3),
                ("Process everything and count the records.", 2),
            ],
            False,
        ),
        (
            [("Compare record counts before and after.", 6), ("Spot check a few rows by hand.", 4)],
            True,
        ),
    ],
    "software": [
        (
            [
                ("Create a branch and list the changes needed.", 5),
                ("Read the current code and note the risks.", 3),
                ("Write a short design note.", 2),
            ],
            False,
        ),
        (
            [
                ("Make the change with tests for each part.", 5),
                ("Build it in small steps and run the tests often.", 3),
                ("Implement the core part first.", 2),
            ],
            False,
        ),
        (
            [
                ("Deploy to staging and test it end to end.", 5),
                ("Ask a teammate to review the change.", 3),
                ("Run the full test suite.", 2),
            ],
            False,
        ),
        (
            [
                ("Release to production and watch the error rates.", 5),
                ("Roll out slowly and keep a rollback plan.", 5),
            ],
            True,
        ),
    ],
    "writing": [
        (
            [
                ("Collect the facts and sources you need.", 5),
                ("Gather notes from the people involved.", 3),
                ("Read the previous version.", 2),
            ],
            False,
        ),
        (
            [
                ("Write an outline with the main points.", 6),
                ("Sketch the structure in a few headings.", 4),
            ],
            False,
        ),
        (
            [
                ("Write a first draft without stopping to polish.", 5),
                ("Draft each section in order.", 3),
                ("Fill in the outline one part at a time.", 2),
            ],
            False,
        ),
        (
            [
                ("Edit for clarity and ask someone to review it.", 6),
                ("Proofread it and fix the tone.", 4),
            ],
            True,
        ),
    ],
    "event": [
        (
            [
                ("Set the date, the budget and the guest list.", 5),
                ("Pick a date and confirm who will come.", 3),
                ("Agree on the budget first.", 2),
            ],
            False,
        ),
        (
            [
                ("Book the venue and any food or equipment.", 5),
                ("Reserve a place and order supplies.", 3),
                ("Choose a location that fits the group.", 2),
            ],
            False,
        ),
        (
            [
                ("Send invitations and track the replies.", 6),
                ("Share the plan and the agenda with everyone.", 4),
            ],
            False,
        ),
        (
            [
                ("Prepare a checklist for the day itself.", 5),
                ("Assign one person to each job on the day.", 5),
            ],
            True,
        ),
    ],
    "home": [
        (
            [
                ("List what you need and set a budget.", 5),
                ("Check what tools and materials you already have.", 3),
                ("Pick a day and clear your schedule.", 2),
            ],
            False,
        ),
        (
            [
                ("Buy or borrow the missing items.", 5),
                ("Get the supplies and prepare the space.", 3),
                ("Ask a friend to help if needed.", 2),
            ],
            False,
        ),
        (
            [
                ("Do the main work one area at a time.", 5),
                ("Work through the job in small parts.", 3),
                ("Start with the hardest part while you have energy.", 2),
            ],
            False,
        ),
        (
            [("Clean up and put everything away.", 6), ("Note what to buy or fix next time.", 4)],
            True,
        ),
    ],
    "learning": [
        (
            [
                ("Set a clear goal and a weekly schedule.", 5),
                ("Test what you already know.", 3),
                ("Choose one good course or book.", 2),
            ],
            False,
        ),
        ([("Practise a little every day.", 6), ("Study in short sessions with breaks.", 4)], False),
        (
            [
                ("Test yourself with real examples each week.", 5),
                ("Track progress and adjust the plan.", 3),
                ("Find a partner or coach for feedback.", 2),
            ],
            False,
        ),
        (
            [
                ("Do a full practice run before the real thing.", 6),
                ("Review weak areas in the last week.", 4),
            ],
            True,
        ),
    ],
    "business": [
        (
            [
                ("Define the budget and the success measure.", 5),
                ("Research what similar businesses do.", 3),
                ("Talk to a few customers first.", 2),
            ],
            False,
        ),
        (
            [
                ("Make a simple plan with owners and dates.", 5),
                ("List the costs and the risks.", 3),
                ("Get approval from the people who decide.", 2),
            ],
            False,
        ),
        (
            [
                ("Start small and measure the results.", 5),
                ("Run a short trial before you commit.", 3),
                ("Launch the first version.", 2),
            ],
            False,
        ),
        (
            [
                ("Review the numbers after a month.", 6),
                ("Adjust the plan based on what you learn.", 4),
            ],
            True,
        ),
    ],
    "default": [
        (
            [
                ("List everything the work needs.", 5),
                ("Split the work into small parts.", 3),
                ("Find out who else is involved.", 2),
            ],
            False,
        ),
        (
            [
                ("Order the parts by priority.", 5),
                ("Estimate the time for each part.", 3),
                ("Remove anything that is not needed.", 2),
            ],
            False,
        ),
        (
            [
                ("Do the parts one at a time.", 5),
                ("Start with the riskiest part.", 3),
                ("Work in short focused sessions.", 2),
            ],
            False,
        ),
    ],
}
_TASK_LAST: Options = [
    ("Check the result and note what to improve next time.", 5),
    ("Review the outcome with the people involved.", 3),
    ("Confirm the goal is met and close the task.", 2),
]
_TASK_PADS: Options = [
    ("Keep short notes as you go.", 4),
    ("Ask for help early if a step is blocked.", 3),
    ("Set a date for each step.", 3),
]
_TASK_OPEN: Options = [("", 6), ("Here is a simple plan.", 3), ("Plan:", 1)]


def _respond_task(prompt: str, rng: random.Random) -> str:
    m = re.search(r"'([^']+)'", prompt)
    x = _clip(m.group(1).strip()) if m else _fallback_phrase(prompt)
    cat = _category(x, _TASK_CATS)
    opener = _pick(rng, _TASK_OPEN)
    steps: list[tuple[str, bool]] = [(_pick(rng, _TASK_FIRST).format(x=x), False)]
    for options, optional in _TASK_STEPS[cat]:
        # optional steps appear often but not always: step count is part of the learnable shape
        if optional and rng.random() < 0.35:
            continue
        steps.append((_pick(rng, options), optional))
    steps.append((_pick(rng, _TASK_LAST), False))

    def render(items: list[tuple[str, bool]]) -> str:
        body = " ".join(f"{i}. {s}" for i, (s, _) in enumerate(items, 1))
        return f"{opener} {body}" if opener else body

    while len(render(steps).split()) > MAX_WORDS and any(opt for _, opt in steps):
        idx = max(i for i, (_, opt) in enumerate(steps) if opt)
        del steps[idx]
    pool = list(_TASK_PADS)
    while len(render(steps).split()) < MIN_WORDS and pool:
        pad = _pick(rng, pool)
        pool = [o for o in pool if o[0] != pad]
        steps.insert(len(steps) - 1, (pad, True))
    return _clean(render(steps))


# --------------------------------------------------------------------------- action

_ACTION_CATS: list[tuple[str, list[tuple[str, float]]]] = [
    ("confirm", _kw("delete the production, privacy policy, privacy", weight=3)),
    ("security", _kw("secret, secret key, leaked, password leaked", weight=3)),
    ("tool", _kw("user asks, user wants, which tool", weight=2)),
    (
        "build",
        _kw(
            "missing module, import error, syntax error, unknown package, lock file, dependency",
            weight=2,
        )
        + _kw("build, compiler, package, packages, install, installer, docker, module, libraries"),
    ),
    ("tests", _kw("test, tests, suite, ci") + _kw("test run, tests fail", weight=2)),
    (
        "network",
        _kw(
            "timed out, timeout, connect, connection, connections, network, "
            "too many requests, refuses",
            weight=2,
        )
        + _kw("download, country, api, mail"),
    ),
    (
        "resources",
        _kw("out of memory, disk, cpu, disk full, fan, gigabytes, space, full", weight=2)
        + _kw("memory, freezes, log folder"),
    ),
    (
        "perms",
        _kw(
            "permission denied, permission, access denied, rejected, "
            "cannot open, does not exist, cannot find, file not found",
            weight=2,
        )
        + _kw("folder, key, drive"),
    ),
    (
        "git",
        _kw("merge conflict, commits, force pushed, branch", weight=2) + _kw("merge, conflict"),
    ),
    (
        "ops",
        _kw("error rates, alert, down, certificate, blank screen, went live, outage", weight=2)
        + _kw("deploy, backup job, customers cannot, checkout"),
    ),
    (
        "data",
        _kw("missing values, totals, duplicate, deleted, formats, migration, rows", weight=2)
        + _kw("imported, export, spreadsheet, table, data"),
    ),
    (
        "clarify",
        _kw("vague, order number is missing, does not say, upset, conflicting", weight=2.5)
        + _kw("unclear, which"),
    ),
    ("done", _kw("finished the task, checks passed", weight=3)),
    ("planning", _kw("task list, days remain, sprint, tasks, never used, deadline", weight=2)),
]

# which tool answers a user request: several are plausible, with unequal weights
_TOOL_CATS: list[tuple[str, list[tuple[str, float]]]] = [
    ("weather", _kw("weather, rain, forecast", weight=2)),
    ("calendar", _kw("book, schedule, meeting room, call with, table for, appointment")),
    ("date", _kw("how many days, days remain, until", weight=2)),
    ("currency", _kw("convert, euros, dollars, exchange rate, pounds")),
    ("files", _kw("files, find all, mention")),
    ("maps", _kw("directions, route, way to", weight=2)),
    ("email", _kw("send, email, notes to, mail to")),
    ("document", _kw("summary, summarise, attached, report they", weight=2)),
    ("search", _kw("latest, version, means, opening hours, news, error code")),
]
_TOOLS: dict[str, Options] = {
    "weather": [("weather", 8), ("web search", 2)],
    "calendar": [("calendar", 8), ("booking", 2)],
    "date": [("calendar", 5), ("calculator", 4), ("date", 1)],
    "currency": [("currency converter", 6), ("web search", 3), ("calculator", 1)],
    "files": [("file search", 7), ("shell", 3)],
    "maps": [("maps", 8), ("web search", 2)],
    "email": [("email", 8), ("messaging", 2)],
    "document": [("document reader", 7), ("file reader", 3)],
    "search": [("web search", 8), ("documentation search", 2)],
    "default": [("web search", 6), ("knowledge base", 4)],
}

_ACT: dict[str, tuple[Options, Options, Options]] = {
    # category -> (next actions, reasons, follow ups)
    "build": (
        [
            ("install the missing dependency and rerun the build", 4),
            ("read the full build log to find the first error", 4),
            ("check the dependency list for a wrong or missing entry", 2),
        ],
        [
            ("the first error usually points to the real cause", 4),
            ("a missing or wrong dependency is the most common cause", 4),
            ("guessing without the log wastes time", 2),
        ],
        [
            ("rerun the build and confirm it passes", 6),
            ("pin the version so it does not break again", 4),
        ],
    ),
    "tests": (
        [
            ("run the failing test alone with verbose output", 5),
            ("compare the CI environment with the local one", 3),
            ("check what changed since the last green run", 2),
        ],
        [
            ("a small reproduction shows the real difference", 4),
            ("environment differences often explain such failures", 3),
            ("the latest change is the most likely cause", 3),
        ],
        [
            ("fix the cause and add a test that covers it", 5),
            ("rerun the full suite before merging", 5),
        ],
    ),
    "network": (
        [
            ("retry the request once with a longer timeout", 4),
            ("check that the remote service is reachable", 4),
            ("look at the service status page and the logs", 2),
        ],
        [
            ("the failure may be temporary or caused by the network", 5),
            ("we need to know if the problem is ours or theirs", 3),
            ("blind retries can make the load worse", 2),
        ],
        [
            ("add retries with backoff if the problem is temporary", 6),
            ("contact the provider if the service is down", 4),
        ],
    ),
    "resources": (
        [
            ("find what uses the most space or memory", 5),
            ("free space by removing old files and caches", 3),
            ("stop the job and lower its batch size", 2),
        ],
        [
            ("the system cannot continue while a resource is exhausted", 5),
            ("knowing the biggest user of the resource guides the fix", 3),
            ("a quick cleanup buys time for a real fix", 2),
        ],
        [
            ("add an alert before the limit is reached again", 6),
            ("plan a lasting fix such as rotation or more capacity", 4),
        ],
    ),
    "perms": (
        [
            ("check the owner and permissions of the target path", 5),
            ("confirm which account the process runs as", 3),
            ("verify that the path exists and is spelled correctly", 2),
        ],
        [
            ("access errors usually come from the wrong user or a wrong path", 5),
            ("changing permissions blindly can open a security hole", 3),
            ("the message points to access, not to the code", 2),
        ],
        [
            ("grant only the access that is needed and retry", 6),
            ("document the fix for the next person", 4),
        ],
    ),
    "git": (
        [
            ("open the conflicting files and resolve each change by hand", 4),
            ("stop and tell the team before anyone pushes again", 3),
            ("fetch the latest main branch and rebase carefully", 3),
        ],
        [
            ("shared history must not be lost or overwritten", 4),
            ("each conflict needs a human decision", 4),
            ("acting fast limits the damage", 2),
        ],
        [
            ("run the tests and push the resolved branch", 6),
            ("agree on a rule that prevents this next time", 4),
        ],
    ),
    "security": (
        [
            ("revoke the exposed secret and issue a new one", 5),
            ("rotate the secret and remove it from the history", 3),
            ("tell the security owner right away", 2),
        ],
        [
            ("anyone may already have copied it", 5),
            ("removing the commit alone does not make it safe", 3),
            ("leaked secrets are used within minutes", 2),
        ],
        [
            ("scan the repository for other secrets", 6),
            ("add a check that blocks secrets before commit", 4),
        ],
    ),
    "confirm": (
        [
            ("stop and ask the user to confirm before anything is changed", 5),
            ("explain the risk and offer a safer option", 3),
            ("check the policy that applies to this request", 2),
        ],
        [
            ("the action cannot be undone easily", 5),
            ("the request may break a rule or harm users", 3),
            ("a wrong step here is very costly", 2),
        ],
        [
            ("make a backup first if the user still confirms", 5),
            ("write down the decision and who made it", 5),
        ],
    ),
    "ops": (
        [
            ("roll back to the last good version", 4),
            ("check the monitoring dashboard and recent changes", 4),
            ("page the on-call engineer", 2),
        ],
        [
            ("users are affected right now", 5),
            ("the timing points to the latest change", 3),
            ("restoring service comes before finding the cause", 2),
        ],
        [
            ("find the root cause once the service is stable", 6),
            ("write a short incident report", 4),
        ],
    ),
    "data": (
        [
            ("inspect a sample of the bad rows", 5),
            ("compare the data with the source system", 3),
            ("stop the pipeline before more bad data arrives", 2),
        ],
        [
            ("seeing real examples shows the pattern", 4),
            ("the source tells us which side is wrong", 3),
            ("bad data spreads to reports quickly", 3),
        ],
        [("fix the cause and rerun the import", 5), ("add a validation check for this case", 5)],
    ),
    "clarify": (
        [
            ("ask the user a short clarifying question", 6),
            ("list the possible meanings and ask which one is right", 3),
            ("acknowledge the problem and ask for the missing details", 1),
        ],
        [
            ("acting on a guess may waste work or upset the user", 5),
            ("the request is missing a key detail", 3),
            ("a clear answer saves time for both sides", 2),
        ],
        [("continue once the user replies", 6), ("confirm the plan back to the user", 4)],
    ),
    "planning": (
        [
            ("rank the open items by value and risk", 5),
            ("pick the single most important item and start it", 3),
            ("tell the stakeholders what can and cannot be done", 2),
        ],
        [
            ("time is limited and not everything fits", 4),
            ("clear priorities avoid wasted effort", 4),
            ("early warning beats a late surprise", 2),
        ],
        [("review progress at the end of each day", 5), ("move the rest to the next plan", 5)],
    ),
    "done": (
        [
            ("report the result to the user with a short summary", 6),
            ("close the task and list any follow up work", 4),
        ],
        [
            ("the user needs to know the work is complete", 6),
            ("a short record helps the next task", 4),
        ],
        [("ask if anything else is needed", 6), ("clean up temporary files", 4)],
    ),
    "default": (
        [
            ("gather more information before changing anything", 5),
            ("read the logs around the event", 3),
            ("ask the owner of the system", 2),
        ],
        [
            ("the cause is not clear yet", 5),
            ("a wrong guess could make things worse", 3),
            ("facts make the next step obvious", 2),
        ],
        [("decide on a fix once the cause is known", 6), ("write down what was found", 4)],
    ),
}
_TOOL_WHY: Options = [
    ("the {tool} tool has the exact data needed", 5),
    ("guessing would give an unreliable answer", 3),
    ("the request matches what this tool does", 2),
]
_TOOL_THEN: Options = [
    ("answer the user with the result", 6),
    ("check the result before replying", 4),
]
_ACTION_PADS: Options = [
    ("Keep the user informed.", 4),
    ("Log what was done.", 3),
    ("Stop if anything looks risky.", 3),
]
_RE_REQUEST = re.compile(r"\b(?:asks|asked|wants)\s+(?:for\s+|to\s+)?(.+)$", re.I)


def _situation(prompt: str) -> str:
    """The prompt without its closing question: the situation the action must answer."""
    sentences = re.split(r"(?<=[.?])\s+", prompt.strip())
    if len(sentences) > 1 and sentences[-1].endswith("?"):
        sentences = sentences[:-1]
    return _strip_end(" ".join(sentences))


def _respond_action(prompt: str, rng: random.Random) -> str:
    sit = _situation(prompt) or _fallback_phrase(prompt)
    s = _clip(_lower_first(sit), 16)
    cat = _category(prompt, _ACTION_CATS)
    if cat == "tool":
        req = _RE_REQUEST.search(sit)
        request = _clip(req.group(1), 10) if req else _fallback_phrase(sit)
        tool = _pick(rng, _TOOLS[_category(sit, _TOOL_CATS)])
        act = _pick(
            rng,
            [
                (f"call the {tool} tool with the request '{request}'", 6),
                (f"call the {tool} tool and pass it '{request}'", 4),
            ],
        )
        why = _pick(rng, _TOOL_WHY).format(tool=tool)
        then = _pick(rng, _TOOL_THEN)
    else:
        acts, whys, thens = _ACT[cat]
        act, why, then = _pick(rng, acts), _pick(rng, whys), _pick(rng, thens)
    then_label = _pick(rng, [("Then:", 6), ("After that:", 3), ("Follow up:", 1)])
    parts = [
        (f"Next action: {act}.", False),
        (f"Reason: {s}, so {why}.", False),
        (f"{then_label} {then}.", True),
    ]
    return _fit(parts, _ACTION_PADS, rng)


# --------------------------------------------------------------------------- reflection

_REFL_CATS: list[tuple[str, list[tuple[str, float]]]] = [
    (
        "success",
        _kw(
            "early, zero downtime, raised, record, in half, first try, "
            "excellent, faster, grew, smoothly, ahead, filled, learned enough, "
            "great, on time",
            weight=2,
        ),
    ),
    (
        "late",
        _kw(
            "late, deadline, behind schedule, postponed, slipped, took twice, "
            "waited, past the plan, weeks late",
            weight=2,
        )
        + _kw("delay, delayed"),
    ),
    ("budget", _kw("over budget, budget, bill, cost, money, paid, spent", weight=2)),
    (
        "quality",
        _kw(
            "bug, down, outage, crashed, deleted, failed during, wrong results, "
            "typo, dropped records, wrong phone, broken, error page, charged",
            weight=2,
        ),
    ),
    (
        "users",
        _kw(
            "users, customers, complained, cancelled, support queue, ratings, "
            "client, visitors, testers, readers",
            weight=1.5,
        )
        + _kw("confusing, hard to use, ignored"),
    ),
    (
        "team",
        _kw(
            "teams, meeting, quit, handover, argued, nobody knew, intern, "
            "weekend, same feature, different answers",
            weight=2,
        ),
    ),
    ("metrics", _kw("rate, target, tickets, accuracy, flat, did not change, few paying", weight=2)),
    ("personal", _kw("i, my", weight=2.5)),
]

# category -> (went well, cause, change); success uses the same slots with positive meaning
_REFL: dict[str, tuple[Options, Options, Options]] = {
    "late": (
        [
            ("the work itself was done with care", 4),
            ("the team kept going and finished", 4),
            ("the delay was visible early enough to discuss", 2),
        ],
        [
            ("the plan had no buffer for surprises", 5),
            ("the estimate was too optimistic", 3),
            ("a dependency was blocked for days", 2),
        ],
        [
            ("add a buffer and review the plan every week", 5),
            ("split the work into smaller milestones", 3),
            ("raise risks as soon as they appear", 2),
        ],
    ),
    "budget": (
        [
            ("the result itself was delivered", 5),
            ("the overspend is now known and measured", 3),
            ("the team was open about the numbers", 2),
        ],
        [
            ("costs were not tracked during the work", 5),
            ("the first estimate left out hidden costs", 3),
            ("the scope grew without a new budget", 2),
        ],
        [
            ("track spending every week against the plan", 5),
            ("keep a reserve of about 10 percent", 3),
            ("agree on a hard limit before starting", 2),
        ],
    ),
    "quality": (
        [
            ("the problem was found and fixed", 4),
            ("the team responded quickly", 4),
            ("people were told what happened", 2),
        ],
        [
            ("the change was not tested in a realistic setting", 5),
            ("there was no review or check for this case", 3),
            ("monitoring did not catch it early", 2),
        ],
        [
            ("add a test and a review step for this kind of change", 5),
            ("roll out changes gradually with alerts", 3),
            ("practise recovery before a real incident", 2),
        ],
    ),
    "users": (
        [
            ("users cared enough to give feedback", 4),
            ("the problem is now visible and measurable", 4),
            ("the team shipped and learned quickly", 2),
        ],
        [
            ("the change was not tested with real users", 5),
            ("the team assumed what users wanted", 3),
            ("the message about the change was unclear", 2),
        ],
        [
            ("test early versions with a few real users", 5),
            ("measure the impact before a full rollout", 3),
            ("explain changes clearly to users", 2),
        ],
    ),
    "team": (
        [
            ("people were willing to talk about it", 4),
            ("the work still moved forward", 4),
            ("the issue came out in the open", 2),
        ],
        [
            ("roles and ownership were not clear", 5),
            ("information was not shared across the team", 3),
            ("the workload was too high for too long", 2),
        ],
        [
            ("name an owner for each area and write it down", 5),
            ("hold a short weekly sync with clear decisions", 3),
            ("protect time for rest and planning", 2),
        ],
    ),
    "metrics": (
        [
            ("the team shipped and has data to learn from", 4),
            ("the measurement itself worked", 4),
            ("some parts of the result improved", 2),
        ],
        [
            ("the change did not address the real problem", 5),
            ("the target was not based on data", 3),
            ("too many things changed at once", 2),
        ],
        [
            ("find the real bottleneck before the next change", 5),
            ("run small experiments and compare results", 3),
            ("set targets from past numbers", 2),
        ],
    ),
    "personal": (
        [
            ("you tried and learned where the gaps are", 5),
            ("you kept going when it was hard", 3),
            ("you now know what to practise", 2),
        ],
        [
            ("preparation did not match the real situation", 5),
            ("the plan was too ambitious for the time", 3),
            ("stress took over on the day", 2),
        ],
        [
            ("practise under realistic conditions", 5),
            ("set smaller goals and track them weekly", 3),
            ("plan rest and routine around the goal", 2),
        ],
    ),
    "success": (
        [
            ("the plan was clear and small", 4),
            ("the team prepared well", 4),
            ("feedback came early", 2),
        ],
        [
            ("good preparation paid off", 5),
            ("the team worked in small steps", 3),
            ("the goal was clear to everyone", 2),
        ],
        [
            ("little, but write down what worked so others can repeat it", 5),
            ("share the approach with other teams", 3),
            ("make sure the pace stays sustainable", 2),
        ],
    ),
    "default": (
        [("the work was finished", 5), ("the team learned something useful", 5)],
        [("a few assumptions were not checked", 5), ("the plan did not fit the real situation", 5)],
        [
            ("check assumptions early and review progress often", 6),
            ("write down the lesson and share it", 4),
        ],
    ),
}
_LESSON: dict[bool, Options] = {
    False: [
        ("Lesson: small checks early prevent big problems later.", 5),
        ("Lesson: make risks visible before they grow.", 3),
        ("Lesson: plan for surprises.", 2),
    ],
    True: [
        ("Lesson: repeat what worked and keep it simple.", 5),
        ("Lesson: clear goals and early feedback pay off.", 3),
        ("Lesson: success is worth a review too.", 2),
    ],
}
_REFL_PADS: Options = [("Review this again in a month.", 5), ("Share the notes with the team.", 5)]


def _respond_reflection(prompt: str, rng: random.Random) -> str:
    body = prompt.split(":", 1)[1] if ":" in prompt else prompt
    outcome = _clip(_lower_first(_strip_end(body)), 16) or _fallback_phrase(prompt)
    cat = _category(outcome, _REFL_CATS)
    if cat == "personal":
        # a personal success ("I learned enough ...") is still a success
        pos = _category(outcome, _REFL_CATS[:1]) == "success"
        cat = "success" if pos else "personal"
    well, cause, change = (_pick(rng, opts) for opts in _REFL[cat])
    positive = cat == "success"
    if positive:
        because = _pick(rng, [("mainly because", 6), ("largely because", 3), ("because", 1)])
        parts = [
            (f"What went well: {outcome}, {because} {cause}.", False),
            (f"Why it worked: {well}.", True),
            (f"What to change: {change}.", False),
        ]
    else:
        because = _pick(rng, [("mostly because", 6), ("probably because", 3), ("because", 1)])
        parts = [
            (f"What went well: {well}.", False),
            (f"What went wrong: {outcome}, {because} {cause}.", False),
            (f"What to change: {change}.", False),
        ]
    if rng.random() < 0.6:
        parts.append((_pick(rng, _LESSON[positive]), True))
    return _fit(parts, _REFL_PADS, rng)


# --------------------------------------------------------------------------- debug

_DEBUG_CATS: list[tuple[str, list[tuple[str, float]]]] = [
    ("none", _kw("none, null, returns nothing, empty dictionary, returns none", weight=2)),
    (
        "offbyone",
        _kw(
            "last item, first character, eleven months, one too high, "
            "index error, 99 percent, same item, final row, should print, skips",
            weight=2,
        ),
    ),
    (
        "perf",
        _kw(
            "slow, slower, slows, seconds to load, queries, takes, one cpu core, "
            "hours instead, minute, seconds to open",
            weight=2,
        ),
    ),
    ("crash", _kw("crashes, crash, killed, dies, maximum depth, freezes, memory use", weight=1.5)),
    (
        "numbers",
        _kw(
            "total, cent, average, 0.1, percentage, price filter, negative, rounded, tax, exactly",
            weight=2,
        ),
    ),
    (
        "encoding",
        _kw(
            "accents, symbols, commas, capital letters, emoji, windows, "
            "question marks, characters, csv",
            weight=2,
        ),
    ),
    (
        "time",
        _kw(
            "hour early, clock change, 1970, next day, wrong time, cron, "
            "wrong day, time zone, abroad, one hour off",
            weight=2.5,
        ),
    ),
    (
        "race",
        _kw(
            "one time in, same moment, threads, together, sometimes, "
            "processed twice, once a day, once in, at random, retries",
            weight=2,
        ),
    ),
    (
        "cache",
        _kw(
            "old logo, another user's, takes an hour, settings reset, stale, "
            "still shows, last week's",
            weight=2.5,
        ),
    ),
    (
        "config",
        _kw(
            "my laptop, on the server, module not found, environment, staging, "
            "in production, scheduler, terminal, locally",
            weight=2,
        ),
    ),
    ("missing", _kw("key error, blank, optional field, field, missing", weight=2)),
]

# category -> (likely causes, checks, fixes)
_DEBUG: dict[str, tuple[Options, Options, Options]] = {
    "none": (
        [
            ("a code path that ends without a return statement", 5),
            ("an in-place method that returns None being used as a value", 3),
            ("an early exit when the input is empty", 2),
        ],
        [
            ("look for a branch that falls through without a return", 5),
            ("print the value right before it is returned", 3),
            ("check whether an in-place call is assigned to a variable", 2),
        ],
        [
            ("return the result on every path, with an empty list as the default", 5),
            ("use the value the method changes instead of its return value", 3),
            ("handle the empty case explicitly", 2),
        ],
    ),
    "offbyone": (
        [
            ("an off-by-one error in the loop or slice bounds", 6),
            ("a range that stops one step too early", 3),
            ("mixing zero-based and one-based counting", 1),
        ],
        [
            ("print the first and last index the loop visits", 5),
            ("test with lists of length zero, one and two", 3),
            ("compare the bounds with the length", 2),
        ],
        [
            ("correct the bound and use the length directly", 5),
            ("iterate over the items instead of the indexes", 3),
            ("use an inclusive end where intended", 2),
        ],
    ),
    "perf": (
        [
            ("work repeated inside a loop, such as one query per item", 5),
            ("a missing index or cache for a hot lookup", 3),
            ("loading everything into memory at once", 2),
        ],
        [
            ("profile one slow run and find the hottest function", 5),
            ("count the queries made for a single request", 3),
            ("time the code with growing input sizes", 2),
        ],
        [
            ("batch the work or move it out of the loop", 5),
            ("add an index or a cache for the lookup", 3),
            ("stream the data in chunks", 2),
        ],
    ),
    "crash": (
        [
            ("an unhandled case such as empty or very large input", 5),
            ("memory that is held and never released", 3),
            ("recursion that goes too deep", 2),
        ],
        [
            ("read the stack trace and the last log lines", 5),
            ("watch memory use over time", 3),
            ("run it with the smallest input that fails", 2),
        ],
        [
            ("handle the edge case and fail with a clear message", 5),
            ("release resources after each use", 3),
            ("replace deep recursion with a loop", 2),
        ],
    ),
    "numbers": (
        [
            ("floating point rounding on money or ratios", 5),
            ("a wrong unit or scale factor", 3),
            ("missing values counted as zeros", 2),
        ],
        [
            ("print the raw values before any rounding", 5),
            ("check the units at each step", 3),
            ("test the boundary values by hand", 2),
        ],
        [
            ("use decimal or whole cents for money", 5),
            ("apply the scale factor once, in one place", 3),
            ("skip missing values instead of counting them", 2),
        ],
    ),
    "encoding": (
        [
            ("text decoded with the wrong character encoding", 5),
            ("a parser that does not handle quotes or special characters", 3),
            ("case or line ending differences between systems", 2),
        ],
        [
            ("check the encoding used to read and write the file", 5),
            ("test with one line that has the special characters", 3),
            ("compare the raw bytes on both systems", 2),
        ],
        [
            ("read and write everything as UTF-8", 5),
            ("use a proper parser instead of splitting by hand", 3),
            ("normalise case and line endings", 2),
        ],
    ),
    "time": (
        [
            ("a time zone or daylight saving mismatch", 5),
            ("local time used where UTC was needed", 3),
            ("a date boundary computed with the wrong offset", 2),
        ],
        [
            ("print the stored time with its zone", 5),
            ("test dates around the clock change", 3),
            ("compare server time and user time", 2),
        ],
        [
            ("store times in UTC and convert only for display", 5),
            ("use a date library that knows time zones", 3),
            ("compute day boundaries in the user zone", 2),
        ],
    ),
    "race": (
        [
            ("a race condition between parallel tasks", 5),
            ("shared state updated without a lock", 3),
            ("a retry that is not idempotent", 2),
        ],
        [
            ("run it many times in a loop and log the order of events", 5),
            ("look for shared data that two tasks change", 3),
            ("add timing logs around the failure", 2),
        ],
        [
            ("protect the shared state with a lock or a transaction", 5),
            ("make the operation idempotent", 3),
            ("remove the hidden ordering between tasks", 2),
        ],
    ),
    "cache": (
        [
            ("a stale cache that is not cleared after updates", 5),
            ("a cache key that is shared between users or versions", 3),
            ("a browser cache with a long lifetime", 2),
        ],
        [
            ("compare the cached value with the source", 5),
            ("look at the cache key and its lifetime", 3),
            ("clear the cache and see if the problem goes away", 2),
        ],
        [
            ("clear the cache whenever the data changes", 5),
            ("include the user or version in the cache key", 3),
            ("shorten the cache lifetime", 2),
        ],
    ),
    "config": (
        [
            ("a difference between the local and the server environment", 5),
            ("a missing or unloaded setting in the environment", 3),
            ("a dependency installed locally but not on the server", 2),
        ],
        [
            ("print the settings and versions in both places", 5),
            ("check which environment file is actually loaded", 3),
            ("compare the installed packages", 2),
        ],
        [
            ("pin versions and load settings the same way everywhere", 5),
            ("add the missing setting to the deploy config", 3),
            ("install the dependency in the build", 2),
        ],
    ),
    "missing": (
        [
            ("data that lacks a field the code expects", 5),
            ("a field name that does not match between form and code", 3),
            ("no default for an optional value", 2),
        ],
        [
            ("log the input that fails and look for the missing field", 5),
            ("compare the field names on both sides", 3),
            ("test with a brand new record", 2),
        ],
        [
            ("use a default when the field is missing", 5),
            ("fix the field name so both sides match", 3),
            ("validate the input at the edge", 2),
        ],
    ),
    "default": (
        [
            ("an unchecked assumption about the input", 5),
            ("a recent change with a side effect", 3),
            ("state that differs between runs", 2),
        ],
        [
            ("reproduce it with the smallest possible input", 5),
            ("read the recent changes", 3),
            ("add logging around the failing step", 2),
        ],
        [
            ("fix the assumption and handle the case", 5),
            ("revert the change and retry it carefully", 3),
            ("reset the state before each run", 2),
        ],
    ),
}
_DEBUG_REPRO: Options = [
    ("reproduce the case where {x}", 5),
    ("write a small test where {x}", 3),
    ("confirm exactly when {x}", 2),
]
_DEBUG_TEST: Options = [
    ("Test: add a regression test for this case.", 6),
    ("Test: add a test that fails before the fix.", 4),
]
_DEBUG_PADS: Options = [("Then rerun the full test suite.", 5), ("Keep the fix small.", 5)]


def _respond_debug(prompt: str, rng: random.Random) -> str:
    body = prompt.split(":", 1)[1] if ":" in prompt else prompt
    symptom = _clip(_lower_first(_strip_end(body)), 16) or _fallback_phrase(prompt)
    cat = _category(symptom, _DEBUG_CATS)
    causes, checks, fixes = _DEBUG[cat]
    label = _pick(rng, [("Likely cause:", 8), ("Most likely cause:", 2)])
    repro = _pick(rng, _DEBUG_REPRO).format(x=symptom)
    parts = [
        (f"{label} {_pick(rng, causes)}.", False),
        (f"Check: {repro}, then {_pick(rng, checks)}.", False),
        (f"Fix: {_pick(rng, fixes)}.", False),
    ]
    if rng.random() < 0.55:
        parts.append((_pick(rng, _DEBUG_TEST), True))
    return _fit(parts, _DEBUG_PADS, rng)


# --------------------------------------------------------------------------- memory

_MEM_CATS: list[tuple[str, list[tuple[str, float]]]] = [
    (
        "health",
        _kw("allergic, vitamin, vegetarian, running goal, birthday, penicillin", weight=2.5),
    ),
    (
        "deadline",
        _kw("due, closes, must be, ends in, expires, renewed, renewal, switched off", weight=2),
    ),
    (
        "schedule",
        _kw("on leave, parental leave", weight=2.5)
        + _kw(
            "moved to, monday, tuesday, wednesday, thursday, friday, saturday, "
            "sunday, pm, am, morning, appointment, leaves at, starts at, every, "
            "holidays, meeting, lesson, call, day, night, week, january, march, "
            "may, june, july, september, october, november, april, august"
        ),
    ),
    ("preference", _kw("prefers, likes, does not like, wants, avoids, prefer", weight=2.5)),
    (
        "people",
        _kw(
            "head of, owns, joined, contact for, reviews, best person, leads, "
            "intern, approves, owner of, lead, starts as",
            weight=2,
        ),
    ),
    (
        "location",
        _kw(
            "drawer, place near, floor, out of order, entrance, street, "
            "cupboard, kit is, keys, near the",
            weight=2,
        ),
    ),
    ("account", _kw("account, email address, password, phone number, calendar", weight=2)),
    (
        "tech",
        _kw(
            "database, api, server, library, branch, cluster, build, python, "
            "export, service, version, indentation, tool, app",
            weight=1.5,
        ),
    ),
]
_MEM_TAG: dict[str, Options] = {
    "schedule": [("schedule", 5), ("calendar", 3), ("dates", 2)],
    "preference": [("preferences", 6), ("likes", 2), ("style", 2)],
    "people": [("people", 5), ("roles", 3), ("contacts", 2)],
    "tech": [("systems", 5), ("engineering", 3), ("setup", 2)],
    "location": [("places", 6), ("office", 4)],
    "deadline": [("deadlines", 6), ("reminders", 4)],
    "account": [("accounts", 6), ("admin", 4)],
    "health": [("health", 5), ("personal", 5)],
    "default": [("notes", 6), ("general", 4)],
}
_MEM_RECALL: dict[str, Options] = {
    "schedule": [
        ("the user plans the week or asks about the {k}", 5),
        ("a meeting or trip is being scheduled", 3),
        ("a reminder for the {k} is due", 2),
    ],
    "preference": [
        ("writing to or planning anything for {who}", 5),
        ("choosing a format, food or time for {who}", 3),
        ("{who} is mentioned", 2),
    ],
    "people": [
        ("someone asks who handles the {k}", 5),
        ("a question about the {k} needs an owner", 3),
        ("{who} is mentioned", 2),
    ],
    "tech": [
        ("working on or deploying the {k}", 5),
        ("a question about the {k} comes up", 3),
        ("debugging problems with the {k}", 2),
    ],
    "location": [("someone asks where to find the {k}", 6), ("planning a visit to the office", 4)],
    "deadline": [
        ("planning work in the weeks before the date", 5),
        ("a reminder about the {k} is due", 3),
        ("the {k} is mentioned", 2),
    ],
    "account": [
        ("sending, sharing or logging in with the {k}", 5),
        ("someone asks about the {k}", 5),
    ],
    "health": [
        ("suggesting food, medicine or activities", 5),
        ("planning health, gifts or fitness", 3),
        ("the user asks for advice about the {k}", 2),
    ],
    "default": [("the topic of the {k} comes up", 6), ("the user asks about the {k}", 4)],
}
_MEM_PRIORITY: dict[str, Options] = {
    "health": [("high", 8), ("medium", 2)],
    "deadline": [("high", 7), ("medium", 3)],
    "schedule": [("medium", 5), ("high", 4), ("low", 1)],
    "preference": [("medium", 6), ("low", 4)],
    "people": [("medium", 7), ("low", 3)],
    "tech": [("medium", 5), ("high", 3), ("low", 2)],
    "location": [("low", 6), ("medium", 4)],
    "account": [("medium", 6), ("high", 4)],
    "default": [("medium", 6), ("low", 4)],
}
_MEM_KEEP: dict[str, Options] = {
    "schedule": [("until the date has passed", 6), ("until it changes again", 4)],
    "deadline": [("until the deadline has passed", 7), ("until the task is done", 3)],
    "default": [("until it changes", 6), ("until the user says otherwise", 4)],
}
_MEM_PADS: Options = [
    ("Confirm it with the user if it looks outdated.", 5),
    ("Replace any older note on this topic.", 5),
]
_VERBISH = _wordset("""
moved prefers prefer likes like wants want does avoids is are starts start runs uses use needs
changes expires joined owns reviews leads approves take belongs sent used must returned renewed
closes ends due called protected leaves happens resets will switched lives works reset
should no longer new old best first second third last next top every each instead
""")
_DATE_WORDS = _wordset("""
monday tuesday wednesday thursday friday saturday sunday january february march april may june
july august september october november december morning afternoon evening night noon week month
""")
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
    tags.append(_pick(rng, _MEM_TAG[cat]))
    recall = _pick(rng, _MEM_RECALL[cat]).format(k=key, who=who)
    keep = _pick(rng, _MEM_KEEP.get(cat, _MEM_KEEP["default"]))
    parts = [
        (f"Store: {_upper_first(fact)}.", False),
        (f"Tags: {', '.join(tags)}.", False),
        (f"Recall when: {recall}.", False),
        (f"Priority: {_pick(rng, _MEM_PRIORITY[cat])}.", True),
        (f"Keep {keep}.", True),
    ]
    if rng.random() < 0.3:
        parts.pop()  # "Keep ..." is a habit, not a rule
    return _fit(parts, _MEM_PADS, rng)


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


# Slot fillers are written as "a | b | c" strings: long lists stay compact and easy to extend.
def _alts(text: str) -> list[str]:
    return [t.strip() for t in text.split("|") if t.strip()]


_CITIES = _alts("Paris | Rome | Lisbon | Berlin | Madrid | Oslo | Tokyo | Dublin")
_DAYS = _alts("Monday | Tuesday | Wednesday | Thursday | Friday")
_PEOPLE = _alts(
    "Alice | Ben | Chen | Dana | Omar | Priya | Tom | Maria | Lee | Grace | Hugo | Yuki"
)

_X_MOVERS = [
    ("train", "travels"),
    ("car", "drives"),
    ("bus", "travels"),
    ("cyclist", "rides"),
    ("boat", "sails"),
    ("runner", "runs"),
]
_X_ITEMS = _alts(
    "notebook | ticket | apple | coffee | sandwich | book | pen | shirt | lamp | chair"
)
_X_WHY = _alts(
    "does a metal spoon get hot in soup | do ships float on the sea | does snow melt in the sun | "
    "do people queue for new phones | does a full server respond slowly | "
    "do cats hide when it rains | does warm air rise | do prices fall after the holidays | "
    "is a rainbow curved | do large meetings make fewer decisions | "
    "does a cold battery die faster | do trees lose leaves | does a busy website need a cache | "
    "do small shops charge more | does a wet road look dark | do new teams make more mistakes | "
    "does water boil faster on a mountain | do birds sing at dawn | "
    "does a database slow down without an index | do people buy more when prices end in 99"
)
_X_HOW = _alts(
    "does a kettle boil water | do plants drink water | does a bank make money from loans | "
    "does a queue keep jobs in order | does a compass find north | do teams agree on a plan | "
    "does a cache decide what to keep | does a boat stay afloat in a storm"
)
_X_HAPPENS = _alts(
    "a shop doubles its prices | you leave ice in the sun | a server loses power | "
    "a team doubles in size | a plant gets no light | two users buy the last ticket at once | "
    "the price of fuel goes up | a database has no backups | you heat water in a closed pot | "
    "a cache is never cleared"
)
_X_CHOICES = [
    ("rent", "buy"),
    ("walk", "drive"),
    ("rewrite the code", "refactor it"),
    ("hire quickly", "wait for the right person"),
    ("save money", "invest it"),
    ("cache the data", "recompute it"),
    ("work alone", "pair with a colleague"),
    ("ship now", "wait for more tests"),
    ("buy a new laptop", "repair the old one"),
    ("study in the morning", "study at night"),
    ("use a library", "write the code yourself"),
    ("cook at home", "eat out"),
]
_X_CONTEXTS = _alts(
    "when money is tight | when time is short | for a small team | for a long project | "
    "when the risk is high | for a beginner | in a busy week | when the deadline is close"
)


def _extra_thinking(rng: random.Random) -> str:
    kind = _pick(
        rng,
        [
            ("unit", 25),
            ("dist", 15),
            ("cost", 20),
            ("why", 15),
            ("how", 5),
            ("happens", 8),
            ("better", 12),
        ],
    )
    t = "Think step by step: "
    if kind == "unit":
        (small, big), n = rng.choice(sorted(_UNITS)), rng.randint(2, 12)
        return f"{t}how many {small} are in {n} {big}s?"
    if kind == "dist":
        who, verb = rng.choice(_X_MOVERS)
        speed = rng.choice([10, 12, 15, 20, 30, 40, 50, 60, 70, 80, 90, 100])
        hours = rng.randint(2, 6)
        return (
            f"{t}a {who} {verb} {speed} kilometres per hour for {hours} hours; how far does it go?"
        )
    if kind == "cost":
        item, price, n = rng.choice(_X_ITEMS), rng.randint(2, 20), rng.randint(2, 12)
        return f"{t}if one {item} costs {price} dollars, what do {n} of them cost?"
    if kind == "why":
        return f"{t}why {rng.choice(_X_WHY)}?"
    if kind == "how":
        return f"{t}how {rng.choice(_X_HOW)}?"
    if kind == "happens":
        return f"{t}what happens when {rng.choice(_X_HAPPENS)}?"
    a, b = rng.choice(_X_CHOICES)
    return f"{t}is it better to {a} or {b} {rng.choice(_X_CONTEXTS)}?"


# (verbs, objects) that make sensible tasks together
_X_TASKS: list[tuple[list[str], list[str]]] = [
    (
        _alts("migrate | back up | clean | archive | export | merge"),
        _alts(
            "the customer database | the sales records | the order history | the support tickets | "
            "the user accounts | the product catalogue | the invoice archive"
        ),
    ),
    (
        _alts("deploy | test | release | upgrade | document"),
        _alts(
            "the billing service | the mobile app | the web shop | the login page | "
            "the reporting api | the search service"
        ),
    ),
    (
        _alts("write | draft | edit | review"),
        _alts(
            "the quarterly report | a product newsletter | the team handbook | a grant proposal | "
            "the release notes | a case study"
        ),
    ),
    (
        _alts("plan | organise | host"),
        _alts(
            "a team dinner | a summer party | a product demo day | a farewell lunch | "
            "a client workshop | a hackathon"
        ),
    ),
    (
        _alts("clean | paint | tidy"),
        _alts("the garage | the kitchen | the spare room | the garden shed | the attic"),
    ),
    (["pack for"], [f"a trip to {c}" for c in _CITIES]),
    (
        _alts("learn | practise"),
        _alts(
            "basic French | public speaking | data analysis | the piano | touch typing | "
            "chess openings"
        ),
    ),
    (
        _alts("launch | grow | promote"),
        _alts(
            "an online course | a small bakery | a design studio | a mobile game | "
            "a consulting service"
        ),
    ),
]


def _extra_task(rng: random.Random) -> str:
    verbs, objects = rng.choice(_X_TASKS)
    x = f"{rng.choice(verbs)} {rng.choice(objects)}"
    frame = _pick(
        rng,
        [
            ("Break the task '{}' into steps.", 6),
            ("Plan the steps for the task '{}'.", 2),
            ("List the steps needed to finish the task '{}'.", 2),
        ],
    )
    return frame.format(x)


_X_COMPONENTS = _alts("build | nightly job | deploy script | test run | import job | backup task")
_X_ERRORS = _alts(
    "a missing module error | a permission denied error | a timeout | an out of memory error | "
    "a disk full error | a file not found error | a merge conflict | a syntax error"
)


def _x_tool_request(rng: random.Random) -> str:
    """A user request that one tool answers; the kind is chosen first, then its slots."""
    kind = rng.randrange(8)
    if kind == 0:
        return f"for the weather in {rng.choice(_CITIES)} on {rng.choice(_DAYS)}"
    if kind == 1:
        return f"to convert {rng.choice([50, 120, 300, 800])} dollars into euros"
    if kind == 2:
        return f"to book a table for {rng.randint(2, 8)} people on {rng.choice(_DAYS)}"
    if kind == 3:
        place = rng.choice(_alts("station | museum | airport | hospital"))
        return f"for directions to the {place} in {rng.choice(_CITIES)}"
    if kind == 4:
        topic = rng.choice(_alts("old logo | billing service | test server"))
        return f"to find all files that mention the {topic}"
    if kind == 5:
        doc = rng.choice(_alts("weekly report | meeting notes | budget plan"))
        team = rng.choice(_alts("sales team | design team | whole team"))
        return f"to email the {doc} to the {team}"
    if kind == 6:
        topic = rng.choice(_alts("the stock market | the new phone | the election"))
        return f"for the latest news about {topic}"
    who = rng.choice(["Alice", "Ben", "the client"])
    return f"to schedule a call with {who} on {rng.choice(_DAYS)}"


def _extra_action(rng: random.Random) -> str:
    q = _pick(rng, [(" What is the next action?", 7), (" What should the agent do next?", 3)])
    kind = _pick(rng, [("fail", 35), ("tool", 30), ("down", 12), ("data", 13), ("vague", 10)])
    if kind == "fail":
        return f"The {rng.choice(_X_COMPONENTS)} failed with {rng.choice(_X_ERRORS)}.{q}"
    if kind == "tool":
        return f"The user asks {_x_tool_request(rng)}. Which tool should be called next?"
    if kind == "down":
        svc = rng.choice(
            _alts("web shop | login service | payment page | mobile api | help centre")
        )
        verb = rng.choice(_alts("log in | pay | place orders | reset passwords | open the app"))
        return f"The {svc} is down and customers cannot {verb}.{q}"
    if kind == "data":
        ds = rng.choice(_alts("imported file | daily export | customer table | sales report"))
        prob = rng.choice(
            _alts(
                "duplicate rows | missing values | dates in two formats | totals that do not match"
            )
        )
        return f"The {ds} has {prob}.{q}"
    topic = rng.choice(
        _alts(
            "the sales report | the new dashboard | the monthly numbers | the user list | "
            "the project plan | the budget | the slides | the customer email"
        )
    )
    return f"The user request about {topic} is vague.{q}"


_X_PROJECTS = _alts(
    "website redesign | mobile app launch | data migration | office move | hiring plan | "
    "marketing campaign | security review | team offsite | product launch | customer survey"
)
_X_OUTCOMES = _alts(
    "shipped two weeks late | went over budget by 40 percent | finished ahead of schedule | "
    "caused a short outage | got great feedback from users | confused many customers | "
    "missed its main target | ran smoothly and on time | needed three extra people | "
    "was cancelled halfway"
)


def _extra_reflection(rng: random.Random) -> str:
    outcome = f"the {rng.choice(_X_PROJECTS)} {rng.choice(_X_OUTCOMES)}"
    frame = _pick(
        rng,
        [
            ("Reflect on this outcome: {}.", 6),
            ("Reflect on what happened: {}.", 2),
            ("Look back on this result and say what to change: {}.", 2),
        ],
    )
    return frame.format(outcome)


_X_CODE_PARTS = _alts(
    "function | parser | report job | login page | api handler | export script | "
    "checkout page | sync service"
)
_X_SYMPTOMS = _alts(
    "returns None instead of a list | skips the last item | is slow with large inputs | "
    "crashes on empty input | shows the wrong total | breaks names with accents | "
    "is one hour off after the clock change | fails about once in ten runs | "
    "shows stale data after an update | works locally but fails on the server | "
    "raises a key error for new users"
)


def _extra_debug(rng: random.Random) -> str:
    symptom = f"the {rng.choice(_X_CODE_PARTS)} {rng.choice(_X_SYMPTOMS)}"
    frame = _pick(
        rng, [("Debug this: {}.", 6), ("Debug this bug: {}.", 2), ("Find the likely bug: {}.", 2)]
    )
    return frame.format(symptom)


_X_PERSON_FACTS = _alts(
    "prefers tea over coffee | owns the billing service | is on leave until Monday | "
    "likes short status updates | leads the data team | works from the Berlin office | "
    "is allergic to nuts | reviews all changes to the api | prefers meetings after 10 am"
)
_X_EVENTS = _alts("team meeting | client call | design review | planning day | board meeting")


def _extra_memory(rng: random.Random) -> str:
    if rng.random() < 0.75:
        fact = f"{rng.choice(_PEOPLE)} {rng.choice(_X_PERSON_FACTS)}"
    else:
        fact = f"the {rng.choice(_X_EVENTS)} moved to {rng.choice([*_DAYS, 'next week'])}"
    frame = _pick(
        rng,
        [
            ("Remember that {}. What should be stored?", 6),
            ("Store this fact for later: {}.", 2),
            ("Summarise this note for memory: {}.", 2),
        ],
    )
    return frame.format(fact)


_EXTRA: dict[str, Callable[[random.Random], str]] = {
    "thinking": _extra_thinking,
    "task": _extra_task,
    "action": _extra_action,
    "reflection": _extra_reflection,
    "debug": _extra_debug,
    "memory": _extra_memory,
}


def _extra_prompts(domain: str, rng: random.Random, n: int, exclude: set[str]) -> list[str]:
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
        for prompt in _extra_prompts(domain, gen, extra_prompts_per_domain, exclude):
            out.append((domain, prompt, respond(domain, prompt, sample_rng())))
    return out
