"""A whole run through `teacher_api = "vllm"`: a data file's answers (given text) scored by a
server that answers as vLLM's OpenAI server does (GET /v1/models; POST /v1/completions with
token-id prompts and `prompt_logprobs`, in vLLM's documented reply shape: one entry per prompt
token, the first null, {str(id): {"logprob", "rank", "decoded_token"}} with the prompt's own
token added when it is outside the top-k), its log-probs computed by the tiny teacher itself.
No vLLM here (it needs a GPU build): this stands for its replies, the run is kd's own.

Tolerance: the cache's targets equal the in-process run's (same teacher, T = 1, top-8) within
2e-3 on float16 log-probs (the server's forward and soft_targets round differently in float32;
float16 halves can flip), and the same top-8 ids where the 8th is not a near tie."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from kd_core.config import KDConfig
from kd_core.data_files.domain import DataSettings, load_data_domain
from kd_core.distiller import TrueKnowledgeDistiller
from kd_core.events import CacheUsed, Step
from kd_core.teacher.cache import load_outputs

pytestmark = pytest.mark.slow
ROWS = [{"prompt": f"What is {i} plus {i}?", "completion": f"It is {2 * i}."} for i in range(8)]


class VllmShaped:
    """/v1/models and /v1/completions (prompt_logprobs) over the tiny teacher. One thread
    serves every request: MLX arrays belong to the thread that built them."""

    def __init__(self, model_path: Path) -> None:
        self.model_path, self.model = model_path, None
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send({"object": "list", "data": [{"id": "tiny", "max_model_len": 512}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                self._send(outer.completions(body))

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def completions(self, body: dict) -> dict:
        from kd_core.models.load import load_model

        if self.model is None:
            self.model, _ = load_model(self.model_path)
        k = body["prompt_logprobs"]
        choices = []
        for i, prompt in enumerate(body["prompt"]):
            logits = self.model(mx.array([prompt])).astype(mx.float32)
            lp = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))[0]
            entries: list = [None]
            for pos in range(1, len(prompt)):
                row = lp[pos - 1]
                top = np.argsort(-row)[:k]
                entry = {
                    str(int(t)): {"logprob": float(row[t]), "rank": r + 1, "decoded_token": "?"}
                    for r, t in enumerate(top)
                }
                own = int(prompt[pos])
                entry.setdefault(str(own), {"logprob": float(row[own]), "rank": 999})
                entries.append(entry)
            choices.append({"index": i, "text": "", "prompt_logprobs": entries})
        choices.reverse()  # vLLM does not promise the order: the client sorts by index
        return {"id": "cmpl-1", "object": "text_completion", "model": "tiny", "choices": choices}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_given_text_through_a_vllm_teacher_equals_the_in_process_run(tiny_pair, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    dom = load_data_domain(str(data), DataSettings(), 0)
    cfg = dict(num_iters=2, batch_size=2, max_seq_length=64, temperature=1.0, top_k=8)
    server = VllmShaped(tiny_pair.teacher)
    try:
        remote: list = []
        TrueKnowledgeDistiller(
            server.url, str(tiny_pair.student),
            KDConfig(**cfg, teacher_api="vllm", output=str(tmp_path / "r")),
            on_event=remote.append, cache_dir=tmp_path / "c-r",
            teacher_tokenizer=str(tiny_pair.teacher),
        ).run({"d": dom})  # fmt: skip
    finally:
        server.close()
    assert server.requests and all(r["prompt_logprobs"] == 8 for r in server.requests)
    local: list = []
    TrueKnowledgeDistiller(
        str(tiny_pair.teacher), str(tiny_pair.student), KDConfig(**cfg, output=str(tmp_path / "l")),
        on_event=local.append, cache_dir=tmp_path / "c-l",
    ).run({"d": dom})  # fmt: skip
    paths = [Path(e.path) for run in (remote, local) for e in run if isinstance(e, CacheUsed)]
    a, b = (load_outputs(p, {}, True) for p in paths)
    assert paths[0].name != paths[1].name  # keyed by what serves it: vLLM's model name
    for s, t in zip(a.sequences, b.sequences, strict=True):
        np.testing.assert_array_equal(s, t)
    for ia, la, ib, lb in zip(
        a.topk_ids, a.topk_logprobs, b.topk_ids, b.topk_logprobs, strict=True
    ):
        np.testing.assert_allclose(la, lb, rtol=0, atol=2e-3)
        tie = np.abs(lb[:, -1] - lb[:, -2]) < 2e-3  # the 8th place is a near tie: ids may swap
        np.testing.assert_array_equal(ia[~tie, :7], ib[~tie, :7])
    steps = [e for e in remote if isinstance(e, Step)]
    assert len(steps) == 2 and np.isfinite(steps[-1].combined)
