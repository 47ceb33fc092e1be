"""Runs that outlive the dashboard: the figures of the detached-run design.

    .venv/bin/python bench/attach.py [--steps 1200] [--cycles 10] [--requests 1000]

1. A `kd distill` run of --steps steps (tiny local pair, no network) is started headless.
   Once it trains: `kd-tui --attach` in a real terminal (tmux), three times, from the command
   to the run's step count on screen; then, in parts, a dashboard under Textual's headless
   driver: its start, and attach_run -> first curve drawn (and what importing costs).
2. The same dashboard detaches and re-attaches --cycles times during the run, then follows
   it to its end: its curves are compared point by point with the run's own metrics.jsonl
   and with a replay of the whole event file (what a dashboard that started the run reads).
3. The same run again, unwatched, same seed, into another folder: adapters compared byte for
   byte, metrics.jsonl row by row (its step_time / elapsed_s are wall-clock times: compared
   without them, and byte for byte with them as a note).
4. The finished run's event file: its size, and the time an open dashboard takes to replay
   it (attach -> every step plotted, run shown finished), of which reading and parsing.
5. `kd-tui --serve --host 0.0.0.0`: --requests requests without the token (none, wrong or
   truncated tokens; every route, websockets included) -> how many got anything but 403, and
   how many dashboard processes the server started.

Writes bench/results/attach.json and prints the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from kd_core.events import event_from_json  # noqa: E402
from kd_core.run.record import EVENTS_FILE, run_dir  # noqa: E402
from kd_core.run.status import read_state  # noqa: E402

TIMING = ("step_time", "elapsed_s")


def distill(pair, out: Path, prompts: Path, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "kd_core", "distill", "--quiet",
        "--teacher", str(pair.teacher), "--student", str(pair.student),
        "--domain-file", str(prompts), "--iters", str(steps), "--max-tokens", "16",
        "--batch-size", "4", "--steps-per-save", str(steps), "--seed", "7",
        "--output", str(out),
    ]  # fmt: skip


def wait_for_step(out: Path, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = read_state(out)
        if s and s.last_step and s.last_step["step"] >= n:
            return
        time.sleep(0.05)
    raise SystemExit(f"no step {n} in {out}")


async def until(pilot, cond, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        await pilot.pause(0.01)


async def watch_live(out: Path, cycles: int, work: Path) -> dict:
    from kd_tui.app import KDApp
    from kd_tui.widgets.loss_plot import LossPlot

    t0 = time.perf_counter()
    app = KDApp(config_path=work / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        started = time.perf_counter() - t0  # what --attach adds to this is the attach below
        plot = app.query_one(LossPlot)
        t1 = time.perf_counter()
        app.attach_run(out)
        await until(pilot, lambda: plot.points > 0)
        first_curve = time.perf_counter() - t1
        steps_then = app.train_pane.view.last_step.step  # < --steps: the run was live
        times = []
        for _ in range(cycles):
            app.detach_run()
            t1 = time.perf_counter()
            app.attach_run(out)
            await until(pilot, lambda: app.train_pane.view.last_step is not None)
            times.append(time.perf_counter() - t1)
            await pilot.pause(0.2)
        await until(pilot, lambda: not app.running)
        series = app.train_pane.view.series
        shown = {k: list(getattr(series, k)) for k in ("x", "kd", "ce", "combined")}
    return {
        "app_start_s": round(started, 3),
        "attach_to_first_curve_s": round(first_curve, 3),
        "steps_in_file_at_attach": steps_then,
        "reattach_s": [round(t, 3) for t in times],
        "series": shown,
    }


async def replay(out: Path, work: Path, steps: int) -> dict:
    """A dashboard already open attaches to the finished run: attach -> all steps plotted."""
    from kd_tui.app import KDApp
    from kd_tui.widgets.loss_plot import LossPlot

    app = KDApp(config_path=work / "kd.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.5)
        view, plot = app.train_pane.view, app.query_one(LossPlot)
        t0 = time.perf_counter()
        app.attach_run(out)
        await until(pilot, lambda: view.status == "finished" and len(view.series) == steps)
        app.train_pane.flush(force=True)
        await until(pilot, lambda: plot.points > 0)
        total = time.perf_counter() - t0
        return {"replay_app_s": round(total, 3), "replay_read_parse_s": app.engine.replay_seconds}


def file_series(out: Path) -> dict:
    from kd_tui.run_view import RunView

    view = RunView()
    for line in (run_dir(out) / EVENTS_FILE).read_text().splitlines():
        view.apply(event_from_json(line))
    return {k: list(getattr(view.series, k)) for k in ("x", "kd", "ce", "combined")}


def metrics_rows(out: Path, domain: str) -> list[dict]:
    return [json.loads(x) for x in (out / domain / "metrics.jsonl").read_text().splitlines()]


def terminal_attach(out: Path, work: Path, steps: int) -> float | None:
    """`kd-tui --attach` in a real terminal (tmux, 120x40): seconds from the command to the
    run's step count on screen (None without tmux)."""
    import re
    import shlex
    import shutil

    if not shutil.which("tmux"):
        return None
    session = f"kd-attach-bench-{os.getpid()}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "kd_tui", "--attach", str(out), "--config", str(work / "kd.toml")]
    env = f"KD_CONFIG_DIR={shlex.quote(str(work / 'cfg'))} PYTHONPATH={shlex.quote(str(ROOT))}"
    seen = re.compile(rf"\b[1-9][0-9]*/{steps}\b")
    t0 = time.perf_counter()
    tmux = ["tmux", "-L", session]  # a server of its own: never another user's sessions
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "120", "-y", "40",
                    f"env {env} {shlex.join(cmd)}"], check=True)  # fmt: skip
    try:
        while time.perf_counter() - t0 < 60:
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", session],
                                    capture_output=True, text=True).stdout  # fmt: skip
            if seen.search(screen):
                return round(time.perf_counter() - t0, 3)
            time.sleep(0.02)
        return None
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def import_cost() -> float:
    code = "import time; t=time.perf_counter(); import kd_tui.app; print(time.perf_counter()-t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout)  # fmt: skip


def token_check(work: Path, n: int) -> dict:
    from test_serve import WS_HEADERS, _children, _request, _server

    routes = ["/", "/ws", "/ws?width=80&height=24", "/static/js/textual.js", "/download/x"]
    with _server(work, "--host", "0.0.0.0") as (proc, port, token):
        bad_tokens = ["", "wrong", token[:-1], token + "x", token.upper()]
        others = 0
        for i in range(n):
            route, bad = routes[i % len(routes)], bad_tokens[i % len(bad_tokens)]
            headers = dict(WS_HEADERS) if i % 2 else {}
            if i % 3 == 1 and bad:
                headers["Cookie"] = f"kd_token={bad}"
            elif i % 3 == 2 and bad:
                route += ("&" if "?" in route else "?") + f"token={bad}"
            others += _request(port, route, headers) != 403
        started = len(_children(proc.pid))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/?token={token}")
        ok = conn.getresponse().status
    return {"requests": n, "not_403": others, "dashboards_started": started, "with_token": ok}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--cycles", type=int, default=10)
    p.add_argument("--requests", type=int, default=1000)
    args = p.parse_args()
    from conftest import build_tiny_pair

    work = Path(tempfile.mkdtemp(prefix="kd-attach-bench-"))
    pair = build_tiny_pair(work / "pair")
    prompts = work / "quick.txt"
    prompts.write_text("Name a colour.\nCount to three.\nSay hello.\nPick a number.\n")
    watched, unwatched = work / "watched", work / "unwatched"
    proc = subprocess.Popen(distill(pair, watched, prompts, args.steps))
    wait_for_step(watched, 100)
    in_terminal = [terminal_attach(watched, work, args.steps) for _ in range(3)]
    live = asyncio.run(watch_live(watched, args.cycles, work))
    assert proc.wait() == 0
    subprocess.run(distill(pair, unwatched, prompts, args.steps), check=True)

    domain = "quick"
    rows_w, rows_u = metrics_rows(watched, domain), metrics_rows(unwatched, domain)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    adapters = [(d / domain / "adapters.safetensors").read_bytes() for d in (watched, unwatched)]
    shown, from_file = live.pop("series"), file_series(watched)
    events = run_dir(watched) / EVENTS_FILE
    result = {
        "load_average_at_end": os.getloadavg(),
        "kd_tui_attach_in_tmux_s": in_terminal,
        **live,
        "import_kd_tui_app_s": round(import_cost(), 3),
        "curves_equal_replayed_file": shown == from_file,
        "curves_equal_metrics_jsonl": shown["kd"] == [r["kd"] for r in rows_w]
        and shown["combined"] == [r["combined"] for r in rows_w],
        "adapters_same_bytes": adapters[0] == adapters[1],
        "metrics_same_rows_without_times": strip(rows_w) == strip(rows_u),
        "metrics_same_bytes": (watched / domain / "metrics.jsonl").read_bytes()
        == (unwatched / domain / "metrics.jsonl").read_bytes(),
        "event_file_bytes": events.stat().st_size,
        "event_file_lines": len(events.read_text().splitlines()),
        **asyncio.run(replay(watched, work, args.steps)),
        "token": token_check(work, args.requests),
    }
    out = ROOT / "bench" / "results" / "attach.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for k, v in result.items():
        print(f"{k:34} {v}")


if __name__ == "__main__":
    main()
