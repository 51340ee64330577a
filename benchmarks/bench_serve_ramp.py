"""Autoscaling under a load ramp: idle -> ``--concurrency`` clients -> a few -> idle, on a local Ray.

Starts the app with ``serve=autoscaling`` (the recognizer scales between
``--min-replicas`` and ``--max-replicas`` replicas of ``--replica-cpus`` CPUs each, so
that two fit a 2-core machine), then runs three phases: ``--idle-s`` without requests,
``--load-s`` of closed-loop clients (one keep-alive connection each, raw ``image/jpeg``
POSTs of FER faces), ``--light-s`` with ``--light-concurrency`` of them (the replicas
scale down while requests still flow, so a replica that stops must drain), and
``--cooldown-s`` idle again. Every ``--window-s`` it records the
recognizer's running replicas (``serve.status()``), requests/s, p50/p99 latency and failed
requests of the answers that finished in that window. The run passes when the replicas
rise while the load lasts, fall back after it, and no request fails, transitions included.

    python benchmarks/bench_serve_ramp.py --throughput-optimized --no-access-log
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import HOST, free_port, load_payloads, machine, post_image, run_serve  # noqa: E402

APP_NAME = "ramp"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--load-s", type=float, default=60.0)
    parser.add_argument("--light-s", type=float, default=40.0)
    parser.add_argument("--light-concurrency", type=int, default=2)
    parser.add_argument("--cooldown-s", type=float, default=15.0)
    parser.add_argument("--window-s", type=float, default=5.0)
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--max-replicas", type=int, default=2)
    parser.add_argument("--target-ongoing", type=int, default=16, help="autoscaling target_ongoing_requests")
    parser.add_argument("--upscale-delay-s", type=float, default=5.0)
    parser.add_argument("--downscale-delay-s", type=float, default=15.0)
    parser.add_argument("--replica-cpus", type=float, default=0.5, help="CPUs each recognizer replica asks for")
    parser.add_argument("--detector", default="full_frame")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--throughput-optimized", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "serve_ramp.json"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides of jobs/configs/serve.yaml")
    return parser.parse_args(argv)


def start_app(args: argparse.Namespace, port: int) -> None:
    scaling = "serve.recognizer.autoscaling_config"
    run_serve(args, [
        "serve=autoscaling", f"detector={args.detector}", f"serve.host={HOST}", f"serve.port={port}",
        f"serve.app_name={APP_NAME}", "serve.recognizer.num_gpus=0", f"serve.recognizer.num_cpus={args.replica_cpus}",
        f"{scaling}.min_replicas={args.min_replicas}", f"{scaling}.max_replicas={args.max_replicas}",
        f"{scaling}.target_ongoing_requests={args.target_ongoing}",
        f"{scaling}.upscale_delay_s={args.upscale_delay_s}", f"{scaling}.downscale_delay_s={args.downscale_delay_s}",
        "serve.ingress.autoscaling_config=null", "serve.ingress.num_cpus=0.25",
    ])


def running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    if app is None:
        return 0
    return int(app.deployments["EmotionRecognizer"].replica_states.get("RUNNING", 0))


class Load:
    """Closed-loop clients; client ``i`` sends while ``i < active`` (set per phase). Every
    answer is recorded as (finish time, latency s, status), with 0 for a connection error."""

    def __init__(self, port: int, payloads: list[bytes], concurrency: int) -> None:
        self.port, self.payloads, self.concurrency = port, payloads, concurrency
        self.active, self.done = 0, threading.Event()
        self.records: list[tuple[float, float, int]] = []
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(concurrency)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _client(self, index: int) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=120)
        n = index
        while not self.done.is_set():
            if index >= self.active:
                time.sleep(0.05)
                continue
            start = time.perf_counter()
            conn, status = post_image(conn, self.port, self.payloads[n % len(self.payloads)])
            self.records.append((time.monotonic(), time.perf_counter() - start, status))
            n += self.concurrency
        conn.close()


def window_row(t0: float, start: float, end: float, records: list, replicas: int, phase: str) -> dict:
    inside = [(lat, status) for finished, lat, status in records if start <= finished < end]
    ok = np.array([lat for lat, status in inside if status == 200]) * 1000
    pct = (lambda q: round(float(np.percentile(ok, q)), 1)) if len(ok) else (lambda q: None)
    return {"t_s": round(end - t0, 1), "phase": phase, "replicas": replicas, "requests": len(inside),
            "failures": sum(1 for _, status in inside if status != 200),
            "rps": round(len(ok) / (end - start), 1), "p50_ms": pct(50), "p99_ms": pct(99)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local Ray that only this process uses
    import ray

    payloads = load_payloads("fer")
    port = free_port()
    timeline: list[dict] = []
    started = time.monotonic()
    try:
        start_app(args, port)
        load = Load(port, payloads, args.concurrency)
        load.start()
        phases = [("idle", args.idle_s, 0), ("load", args.load_s, args.concurrency),
                  ("light", args.light_s, args.light_concurrency), ("cooldown", args.cooldown_s, 0)]
        t0 = time.monotonic()
        for phase, seconds, clients in phases:
            load.active = clients
            phase_end = time.monotonic() + seconds
            while time.monotonic() < phase_end - 1e-3:
                window_start = time.monotonic()
                time.sleep(min(args.window_s, phase_end - window_start))
                row = window_row(t0, window_start, time.monotonic(), load.records, running_replicas(), phase)
                timeline.append(row)
                print(json.dumps(row), flush=True)
        load.done.set()
        for t in load.threads:
            t.join(120)
    finally:
        # The local Ray stops whole, Serve with it. serve.shutdown() first would add
        # nothing here, and Ray's core worker reports the controller's self-kill at its
        # end as failed controller tasks ("Task ServeController.graceful_shutdown failed").
        ray.shutdown()
    # Answers that finished after the last window (the tail of the load) count too.
    failures = sum(1 for _, _, status in load.records if status != 200)
    peak = max((r["replicas"] for r in timeline if r["phase"] == "load"), default=0)
    final = timeline[-1]["replicas"] if timeline else 0
    light = [r["replicas"] for r in timeline if r["phase"] == "light"]
    report = {
        "command": "python benchmarks/bench_serve_ramp.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "requests": len(load.records), "failures": failures,
        "replicas_idle": timeline[0]["replicas"] if timeline else 0, "replicas_peak_under_load": peak,
        "replicas_at_end": final,
        "scaled_up": peak > args.min_replicas, "scaled_down": final == args.min_replicas,
        "scaled_down_under_light_load": bool(light) and light[-1] < peak,
        "elapsed_s": round(time.monotonic() - started, 1), "machine": machine(), "timeline": timeline,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{'t s':>6} {'phase':>8} {'replicas':>8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6}")
    for r in timeline:
        print(f"{r['t_s']:>6} {r['phase']:>8} {r['replicas']:>8} {r['rps']:>7} {r['p50_ms']!s:>8} "
              f"{r['p99_ms']!s:>8} {r['failures']:>6}")
    print(f"requests {report['requests']}, failed {failures}; replicas {report['replicas_idle']} -> {peak} -> {final}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
