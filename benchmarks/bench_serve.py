"""Throughput and latency of the HTTP API with dynamic batching on and off.

Starts the app once on a local Ray (127.0.0.1 only). Each repeat switches the running
recognizer between the batching settings (its ``reconfigure``: same process and model)
and, for each concurrency, sends ``--requests`` images from a bounded thread pool (one
keep-alive connection per thread, raw ``image/jpeg`` bodies, stopped at
``--max-seconds``). Reports, per setting and concurrency, the median over repeats of
requests/s and p50/p95/p99 latency, failures, the mean batch the recognizer ran, and the
CPU time per request of each Serve process (load-independent), as a table and JSON.

    python benchmarks/bench_serve.py                       # FER faces, full-frame detector
    python benchmarks/bench_serve.py --throughput-optimized --no-access-log --batch-wait-s 0.03
    python benchmarks/bench_serve.py --images photos --detector retinaface --requests 48
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # `jobs` is importable when run as a script
HOST = "127.0.0.1"  # the benchmark only ever talks to this machine
APP_NAME = "bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", choices=("fer", "photos"), default="fer",
                        help="fer: 48x48 FER2013 val faces; photos: the sample photos (obama, batman, trump)")
    parser.add_argument("--detector", default="full_frame", help="detector config (full_frame suits FER faces)")
    parser.add_argument("--requests", type=int, default=256, help="requests per (setting, concurrency, repeat)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="time bound per (setting, concurrency, repeat)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--batch-sizes", default="32,1", help="max_batch_size settings to compare (1 = unbatched)")
    parser.add_argument("--batch-wait-s", type=float, default=0.01)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2, help="logical CPUs of the local Ray")
    parser.add_argument("--repeats", type=int, default=3, help="alternate the settings this many times; report medians")
    parser.add_argument("--throughput-optimized", action=argparse.BooleanOptionalAction, default=False,
                        help="Ray Serve's HAProxy ingress + gRPC between replicas (serve.throughput_optimized)")
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "bench_serve_results.json"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides of jobs/configs/serve.yaml")
    return parser.parse_args(argv)


def load_payloads(kind: str, limit: int = 256) -> list[bytes]:
    if kind == "photos":
        from emotion.weights import SAMPLE_PHOTOS, resolve

        return [resolve(spec).read_bytes() for spec in SAMPLE_PHOTOS.values()]
    from emotion.tagging.samples import fer2013_root

    root = fer2013_root()
    if root is None:
        sys.exit("FER2013 not found (../shared/data/fer2013 or $EMOTION_FER2013); use --images photos")
    # Round-robin over classes, so every class is in the first few requests.
    per_class = [sorted(d.glob("*.jpg")) for d in sorted((root / "val").iterdir()) if d.is_dir()]
    files = [f for group in itertools.zip_longest(*per_class) for f in group if f is not None][:limit]
    return [f.read_bytes() for f in files]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_app(args: argparse.Namespace, port: int, max_batch_size: int) -> None:
    run_serve(args, [
        f"detector={args.detector}", f"serve.host={HOST}", f"serve.port={port}", f"serve.app_name={APP_NAME}",
        f"serve.recognizer.max_batch_size={max_batch_size}",
        f"serve.recognizer.batch_wait_timeout_s={args.batch_wait_s}",
        f"serve.recognizer.torch_threads={args.torch_threads}", "serve.recognizer.num_gpus=0",
    ])


def post_image(conn: http.client.HTTPConnection, port: int,
               payload: bytes) -> tuple[http.client.HTTPConnection, int]:
    """POST one image to ``/v1/recognize``: (the connection to use next, the HTTP status;
    -1 for a 200 whose body is not a result, 0 when the connection failed, which is then
    replaced)."""
    try:
        conn.request("POST", "/v1/recognize", body=payload, headers={"Content-Type": "image/jpeg"})
        response = conn.getresponse()
        body = response.read()
        return conn, response.status if response.status != 200 or body.startswith(b'{"model"') else -1
    except (OSError, http.client.HTTPException):
        conn.close()
        return http.client.HTTPConnection(HOST, port, timeout=120), 0


def run_serve(args: argparse.Namespace, overrides: list[str]) -> None:
    """``emotion serve`` in this process with ``overrides`` and the benchmark's shared
    options (access log, proxy mode, the local Ray's CPUs, the user's extra overrides)."""
    from hydra import compose, initialize_config_dir

    from jobs.serve import run

    overrides = [
        *overrides,
        f"serve.access_log={str(args.access_log).lower()}",
        f"serve.throughput_optimized={str(args.throughput_optimized).lower()}",
        f"ray.num_cpus={args.num_cpus}", "ray.log_to_driver=false", *args.overrides,
    ]
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "jobs" / "configs"), version_base="1.3"):
        cfg = compose(config_name="serve", overrides=overrides)
    run(cfg)


def set_batching(max_batch_size: int, wait_s: float) -> None:
    """Switch the running replica's batching (its ``reconfigure``): same process, same
    model, so settings can alternate and share the machine's background load fairly."""
    from ray import serve

    handle = serve.get_deployment_handle("EmotionRecognizer", app_name=APP_NAME)
    handle.reconfigure.remote({"max_batch_size": max_batch_size,
                               "batch_wait_timeout_s": wait_s if max_batch_size > 1 else 0.0}).result()


def load(port: int, payloads: list[bytes], n: int, concurrency: int, max_seconds: float) -> dict:
    """``n`` POSTs from ``concurrency`` threads (stops early at ``max_seconds``)."""
    counter = itertools.count()
    deadline = time.monotonic() + max_seconds

    def worker() -> list[tuple[float, int]]:
        conn = http.client.HTTPConnection(HOST, port, timeout=120)
        done = []
        while True:
            i = next(counter)  # atomic under the GIL
            if i >= n or time.monotonic() > deadline:
                break
            start = time.perf_counter()
            conn, status = post_image(conn, port, payloads[i % len(payloads)])
            done.append((time.perf_counter() - start, status))
        conn.close()
        return done

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(worker) for _ in range(concurrency)]
        results = [item for f in futures for item in f.result()]
    wall = time.perf_counter() - start
    latencies = np.array([lat for lat, status in results if status == 200]) * 1000
    failures = sum(1 for _, status in results if status != 200)
    pct = (lambda q: round(float(np.percentile(latencies, q)), 1)) if len(latencies) else (lambda q: None)
    return {"requests": len(results), "failures": failures, "wall_s": round(wall, 2),
            "rps": round((len(results) - failures) / wall, 1), "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99)}


ROLES = {"recognizer": f"ServeReplica:{APP_NAME}:EmotionRecognizer", "ingress": f"ServeReplica:{APP_NAME}:EmotionAPI",
         "proxy": "ProxyActor", "haproxy": "haproxy"}


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def serve_processes() -> dict[str, list[int]]:
    """PIDs of this run's Serve processes by role: descendants of this process only (other
    Ray instances on the machine are not ours). Linux /proc; empty elsewhere."""
    if not Path("/proc/self/stat").exists():
        return {}
    tree, found, stack = _children(), {}, [os.getpid()]
    while stack:
        pid = stack.pop()
        stack.extend(tree.get(pid, []))
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        program = cmd.split(" ", 1)[0]  # Ray sets its workers' titles, e.g. ray::ServeReplica:bench:...
        for role, needle in ROLES.items():
            if needle in program:
                found.setdefault(role, []).append(pid)
                break
    return found


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """User + system CPU time per role (and this client process)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for role, group in pids.items():
        total = 0.0
        for pid in group:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                pass
        out[role] = total
    times = os.times()
    out["client"] = times.user + times.system
    return out


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import ray
    import torch

    return {"nproc": os.cpu_count(), "cpu": cpu, "load_avg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__}


def render(rows: list[dict]) -> str:
    head = (f"{'max_batch':>9} {'conc':>4} {'req':>5} {'fail':>4} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} "
            f"{'p99 ms':>8} {'batch':>6}  CPU ms/request (recognizer, ingress, proxy, client)")
    lines = [head, "-" * len(head)]
    for r in rows:
        cpu = r["cpu_ms_per_request"]
        proxy = cpu.get("proxy", 0.0) + cpu.get("haproxy", 0.0)
        lines.append(f"{r['max_batch_size']:>9} {r['concurrency']:>4} {r['requests']:>5} {r['failures']:>4} "
                     f"{r['rps']:>7} {r['p50_ms']!s:>8} {r['p95_ms']!s:>8} {r['p99_ms']!s:>8} {r['mean_batch']:>6}  "
                     f"{cpu.get('recognizer', 0.0):.1f}, {cpu.get('ingress', 0.0):.1f}, {proxy:.1f}, {cpu['client']:.1f}")
    return "\n".join(lines)


def summarize(runs: list[dict]) -> dict:
    """Repeats of one (setting, concurrency) -> medians, and failures summed."""
    med = lambda key: (round(float(np.median([r[key] for r in runs if r[key] is not None])), 1)
                       if any(r[key] is not None for r in runs) else None)
    return {"requests": sum(r["requests"] for r in runs), "failures": sum(r["failures"] for r in runs),
            "rps": med("rps"), "rps_runs": [r["rps"] for r in runs], "p50_ms": med("p50_ms"),
            "p95_ms": med("p95_ms"), "p99_ms": med("p99_ms"), "mean_batch": med("mean_batch"),
            "cpu_ms_per_request": {role: round(float(np.median([r["cpu_ms_per_request"][role] for r in runs])), 2)
                                   for role in runs[0]["cpu_ms_per_request"]}}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local Ray that only this process uses
    import ray

    payloads = load_payloads(args.images)
    port = args.port or free_port()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    runs: dict[tuple[int, int], list[dict]] = {}
    started = time.monotonic()
    try:
        start_app(args, port, batch_sizes[0])
        load(port, payloads, 2 * max(concurrencies), max(concurrencies), 60)  # warm-up
        pids = serve_processes()
        print(f"serve processes: {pids}", flush=True)
        # Settings alternate within each repeat, so background load hits them alike.
        for repeat in range(args.repeats):
            for max_batch_size in batch_sizes:
                set_batching(max_batch_size, args.batch_wait_s)
                for concurrency in concurrencies:
                    load(port, payloads, concurrency, concurrency, 10)  # settle the new setting
                    before, cpu_before = get_json(port, "/v1/stats"), cpu_seconds(pids)
                    row = load(port, payloads, args.requests, concurrency, args.max_seconds)
                    after, cpu_after = get_json(port, "/v1/stats"), cpu_seconds(pids)
                    # CPU per request does not depend on what else runs on the machine.
                    row["cpu_ms_per_request"] = {role: round(1000 * (cpu_after[role] - cpu_before[role]) / max(row["requests"], 1), 2)
                                                 for role in cpu_before}
                    batches = after["batches"] - before["batches"]
                    row["mean_batch"] = round((after["requests"] - before["requests"]) / batches, 2) if batches else 0.0
                    runs.setdefault((max_batch_size, concurrency), []).append(row)
                    print(json.dumps({"repeat": repeat, "max_batch_size": max_batch_size,
                                      "concurrency": concurrency, **row}), flush=True)
    finally:
        # The local Ray stops whole, Serve with it. serve.shutdown() first would add
        # nothing here, and Ray's core worker reports the controller's self-kill at its
        # end as failed controller tasks ("Task ServeController.graceful_shutdown failed").
        ray.shutdown()
    rows = [{"max_batch_size": b, "concurrency": c, **summarize(runs[(b, c)])}
            for b in batch_sizes for c in concurrencies if (b, c) in runs]
    report = {"command": "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "images": args.images, "detector": args.detector, "torch_threads": args.torch_threads,
              "batch_wait_s": args.batch_wait_s, "repeats": args.repeats,
              "throughput_optimized": args.throughput_optimized, "access_log": args.access_log,
              "elapsed_s": round(time.monotonic() - started, 1), "machine": machine(), "results": rows}
    by_key = {(r["max_batch_size"], r["concurrency"]): r for r in rows}
    top = max(concurrencies)
    if 1 in batch_sizes and len(batch_sizes) > 1 and by_key.get((1, top), {}).get("rps"):
        report["speedup_at_max_concurrency"] = round(by_key[(max(batch_sizes), top)]["rps"] / by_key[(1, top)]["rps"], 2)
    output = Path(args.out)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(render(rows))
    if "speedup_at_max_concurrency" in report:
        print(f"batched / unbatched throughput at concurrency {top}: {report['speedup_at_max_concurrency']}x")
    print(f"machine: {report['machine']}\nwrote {output}")


if __name__ == "__main__":
    main()
