"""A teacher on another machine (issue 26), on loopback: what the HTTP hop costs.

    .venv/bin/python bench/remote.py [--teacher issue|demo] [--rounds 5] [--sequences 16]
        [--response 128] [--prompts 8] [--max-tokens 64]

The teacher is the issue's 8 x 768 llama (vocabulary 8192, random weights, built locally, as
bench/steps.py builds it) or the shipped demo teacher (4 x 128, vocabulary 1024). It is
served by `python -m kd_core.remote` in a process of its own, and loaded in this one too.

1. Scoring (the offline pass's targets, and the teacher's call in online / on-policy steps):
   the same sequences through `soft_targets` in-process and through KdTeacher.score over
   loopback (float16 log-probs, as the cache keeps them), rounds alternated, medians.
   At two shapes: the offline pass's (--sequences x (32 prompt + --response) tokens, top-32)
   and an online step's batch (4 x 256, top-32).
2. The teacher pass: the server's /v1/generate (answers + targets + texts) against
   generate_responses + soft_targets + response_texts in-process, same settings and seed.
3. Bytes: reply (and request) body bytes per scored token at k = 11 and 32, float16 and
   float32, against the bytes per token of the cache file save_outputs writes for the same
   targets (and of its target arrays alone). HTTP headers add ~150 bytes per request.

Prints a table and writes bench/results/remote.json.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, TEACHER, atomic_write_json, machine_facts  # noqa: E402

PROMPT_LEN = 32
TOP_K = 32
TEMPERATURE = 2.0
ONLINE_SHAPE = (4, 256)  # bench/common.py's step batch


def build_teacher(kind: str, root: Path) -> Path:
    """The issue's teacher shape (random weights, local tokenizer) or the demo teacher."""
    import kd_core  # noqa: F401  (fast BLAS before MLX)
    from kd_core.models.load import resolve_model

    if kind == "demo":
        return resolve_model("demo-teacher", "teacher")
    from pydoc_data.topics import topics

    from kd_core.demo.tiny import LlamaSize, eos_id, new_llama, save_model, train_tokenizer

    tok = root / "tokenizer"
    train_tokenizer(list(topics.values()), TEACHER.vocab, tok)
    size = LlamaSize(TEACHER.hidden, TEACHER.layers, TEACHER.intermediate, TEACHER.heads)
    model, config = new_llama(size, TEACHER.vocab, 1)
    save_model(model, {**TEACHER.config(), **config}, root / "teacher", tok, eos_id(tok))
    return root / "teacher"


def start_server(model: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kd_core", "serve-teacher", "--model", str(model), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    first = lines.get(timeout=300)
    return proc, first.rsplit(" on ", 1)[1].strip()


def sequences(n: int, length: int, vocab: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)  # ids above 3: no special token mid-sequence
    return [rng.integers(4, vocab, size=length).astype(np.int32) for _ in range(n)], [
        PROMPT_LEN
    ] * n


def alternate(a: Any, b: Any, rounds: int) -> tuple[list[float], list[float]]:
    """Time a() and b() in alternating rounds after one warm-up call of each."""
    a(), b()
    ta, tb = [], []
    for _ in range(rounds):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return ta, tb


def score_ratio(model: Any, client: Any, seqs: list, plens: list, rounds: int) -> dict[str, Any]:
    from kd_core.config import KDConfig
    from kd_core.runtime.cpu_streams import stream_count
    from kd_core.teacher.teacher_pass import FWD_CHUNK, soft_targets

    cfg = KDConfig(temperature=TEMPERATURE, top_k=TOP_K)
    streams = stream_count(cfg.cpu_streams, FWD_CHUNK)  # as the teacher pass and the server
    local, remote = alternate(
        lambda: soft_targets(model, seqs, plens, cfg, streams=streams),
        lambda: client.score(seqs, plens, TEMPERATURE, TOP_K),
        rounds,
    )
    lm, rm = statistics.median(local), statistics.median(remote)
    return {
        "in_process_s": round(lm, 4),
        "remote_s": round(rm, 4),
        "ratio": round(rm / lm, 3),
        "in_process_all_s": [round(x, 4) for x in local],
        "remote_all_s": [round(x, 4) for x in remote],
    }


def teacher_pass_ratio(model: Any, tok: Any, client: Any, args: Any) -> dict[str, Any]:
    from kd_core.config import KDConfig
    from kd_core.generate import generate_responses
    from kd_core.runtime.cpu_streams import stream_count
    from kd_core.teacher.cache import response_texts
    from kd_core.teacher.teacher_pass import FWD_CHUNK, soft_targets

    prompts = [f"Explain Python topic number {i} in a few words." for i in range(args.prompts)]
    settings = dict(
        max_tokens=args.max_tokens,
        teacher_temperature=0.7,
        seed=0,
        max_seq_length=512,
        temperature=TEMPERATURE,
        top_k=TOP_K,
    )
    cfg = KDConfig(**settings)

    def local() -> None:
        seqs, plens = generate_responses(model, tok, prompts, cfg)
        soft_targets(model, seqs, plens, cfg, streams=stream_count(cfg.cpu_streams, FWD_CHUNK))
        response_texts(tok, seqs, plens)

    ta, tb = alternate(
        local, lambda: client.generate(prompts, **settings), max(1, args.rounds // 2)
    )
    lm, rm = statistics.median(ta), statistics.median(tb)
    return {
        "prompts": len(prompts),
        "max_tokens": args.max_tokens,
        "in_process_s": round(lm, 3),
        "remote_s": round(rm, 3),
        "ratio": round(rm / lm, 3),
    }


def wire_bytes(url: str, seqs: list, plens: list) -> dict[str, Any]:
    from kd_core.remote import make_teacher

    positions = sum(len(s) - p for s, p in zip(seqs, plens, strict=True))
    out = {}
    for k in (11, 32):
        for dtype in ("float16", "float32"):
            c = make_teacher(url, "kd", logprob_dtype=dtype)
            c.score(seqs, plens, TEMPERATURE, k)
            out[f"k{k}_{dtype}"] = {
                "reply_bytes_per_token": round(c.http.bytes_received / positions, 1),
                "request_bytes_per_token": round(c.http.bytes_sent / positions, 1),
            }
    return out


def cache_bytes(model: Any, tok: Any, seqs: list, plens: list, vocab: int) -> dict[str, Any]:
    """Bytes per response token of the cache file the teacher pass would write for these
    sequences (targets, chosen log-probs, texts and offsets), and of its targets alone."""
    from kd_core.config import KDConfig
    from kd_core.teacher.cache import TeacherOutputs, response_texts, save_outputs
    from kd_core.teacher.teacher_pass import soft_targets

    ids, lps, chosen = soft_targets(
        model, seqs, plens, KDConfig(temperature=TEMPERATURE, top_k=TOP_K)
    )
    out = TeacherOutputs(seqs, plens, ids, lps, vocab)
    out.chosen_logprobs = chosen
    out.texts, out.char_ends = response_texts(tok, seqs, plens)
    positions = out.response_tokens
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cache.safetensors"
        save_outputs(path, out, {"key": "bench"})
        size = path.stat().st_size
    id_bytes = 2 if vocab <= 1 << 16 else 4
    return {
        "file_bytes_per_token": round(size / positions, 1),
        "targets_bytes_per_token": TOP_K * (id_bytes + 2),
        "positions": positions,
    }


def measure(args: Any) -> dict[str, Any]:
    import os

    from kd_core.models.load import load_model, vocab_size
    from kd_core.remote import make_teacher

    facts = machine_facts()
    with tempfile.TemporaryDirectory() as d:
        os.environ.setdefault("KD_CACHE_DIR", str(Path(d) / "kd-cache"))  # fingerprint memo
        path = build_teacher(args.teacher, Path(d))
        proc, url = start_server(path)
        try:
            model, tok = load_model(path, "teacher")
            vocab = vocab_size(model)
            client = make_teacher(url, "kd")  # float16 log-probs, as the cache keeps them
            offline = sequences(args.sequences, PROMPT_LEN + args.response, vocab, 0)
            online = sequences(ONLINE_SHAPE[0], ONLINE_SHAPE[1] + 1, vocab, 1)
            result = {
                "teacher": args.teacher,
                "teacher_vocab": vocab,
                "top_k": TOP_K,
                "offline_shape": [args.sequences, PROMPT_LEN + args.response],
                "score_offline": score_ratio(model, client, *offline, args.rounds),
                "score_online_step": score_ratio(model, client, *online, args.rounds),
                "teacher_pass": teacher_pass_ratio(model, tok, client, args),
                "wire": wire_bytes(url, *offline),
                "cache": cache_bytes(model, tok, *offline, vocab),
            }
        finally:
            proc.kill()
            proc.wait()
    wire = result["wire"]["k32_float16"]["reply_bytes_per_token"]
    result["wire_vs_cache_bytes_ratio"] = round(wire / result["cache"]["file_bytes_per_token"], 3)
    result["wire_vs_cache_targets_ratio"] = round(
        wire / result["cache"]["targets_bytes_per_token"], 3
    )
    import mlx.core as mx

    facts["mlx"] = mx.__version__
    facts["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["machine"] = facts
    return result


def table(r: dict[str, Any]) -> str:
    rows = [
        ("score, offline shape: remote / in-process", r["score_offline"]["ratio"], "<= 1.15"),
        (
            "score, online step 4 x 256: remote / in-process",
            r["score_online_step"]["ratio"],
            "<= 1.15",
        ),
        (
            "teacher pass (generate + targets): remote / in-process",
            r["teacher_pass"]["ratio"],
            "<= 1.15",
        ),
        (
            "reply bytes per token, k=32 float16",
            r["wire"]["k32_float16"]["reply_bytes_per_token"],
            "",
        ),
        ("cache file bytes per token (k=32)", r["cache"]["file_bytes_per_token"], ""),
        ("wire / cache bytes per token", r["wire_vs_cache_bytes_ratio"], "<= 2"),
        ("wire / cache target bytes per token", r["wire_vs_cache_targets_ratio"], ""),
    ]
    for key, v in r["wire"].items():
        rows.append(
            (
                f"reply / request bytes per token, {key}",
                f"{v['reply_bytes_per_token']} / {v['request_bytes_per_token']}",
                "",
            )
        )
    width = max(len(a) for a, _, _ in rows)
    return "\n".join(f"{a:{width}}  {b!s:>14}  {c}" for a, b, c in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", choices=("issue", "demo"), default="issue")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sequences", type=int, default=16)
    p.add_argument("--response", type=int, default=128)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()
    result = measure(args)
    atomic_write_json(RESULTS / "remote.json", result)
    print(table(result))
    print(f"wrote {RESULTS / 'remote.json'}")


if __name__ == "__main__":
    main()
