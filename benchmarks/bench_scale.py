"""Tagging at scale: how long before the first committed unit, how much memory the driver
takes, and how a killed job resumes, for inputs of 10^4 to 10^6 images (local folders)
and 10^5 objects (the loopback S3 server).

    .venv/bin/python benchmarks/bench_scale.py [--sizes 10000,100000,1000000] [--s3 100000]
        [--root /tmp/emotion-scale] [--resume-done 900000] [--override KEY=VALUE ...]

Each input is a tree of folders of 1,000 hard links to a few real face images (FER2013
val when ../shared/data is there, else the photos shipped with the weights), built once
under ``--root`` and reused. For each input the real command (``emotion tag input=...
output=...``) runs in its own process group, as a user would run it:

1. a fresh job: seconds from the command to its first committed unit, and the driver
   process's peak resident memory (``VmHWM``) until then and ``--after-s`` seconds past it;
   then the whole process group is killed (SIGKILL: the driver and its local Ray);
2. the same command again (resume): seconds to its first new unit, the driver's peak
   memory, whether every unit of the killed run is still there, and how many images the
   resumed job reports as already tagged. ``--resume-done N`` first adds units holding N
   more of the largest input's images (copies of a committed row with other sources), so
   the resume checks an output of that size.

Listing alone (``emotion.tagging.inputs.list_inputs`` in this process) is timed too. Writes
bench_scale_results.json next to this file (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_workspace import cpu_model

ROOT = Path(__file__).resolve().parents[1]
EMOTION = str(ROOT / ".venv" / "bin" / "emotion")
PER_FOLDER = 1000


def seed_images() -> list[Path]:
    fer = ROOT.parent / "shared" / "data" / "fer2013" / "val"
    if fer.is_dir():
        return [p for d in sorted(fer.iterdir()) for p in sorted(d.glob("*.jpg"))[:10]]
    sys.path.insert(0, str(ROOT))
    from emotion.weights import SAMPLE_PHOTOS, resolve

    return [Path(resolve(spec)) for spec in SAMPLE_PHOTOS.values()]


def build_tree(folder: Path, images: int, seeds: list[Path]) -> Path:
    """``images`` hard links in folders of ``PER_FOLDER``; built once (``.complete`` marks it)."""
    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    for start in range(0, images, PER_FOLDER):
        sub = folder / f"{start // PER_FOLDER:05d}"
        sub.mkdir(parents=True)
        for i in range(start, min(start + PER_FOLDER, images)):
            os.link(seeds[i % len(seeds)], sub / f"{i:08d}.jpg")
    done.write_text("")
    print(f"built {folder} ({images} links) in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def peak_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def units(output: Path) -> set[str]:
    return {p.name for p in output.glob("part-*.parquet")} if output.exists() else set()


def run_until_first_unit(args: list[str], output: Path, env: dict[str, str], after_s: float,
                         timeout_s: float) -> dict[str, Any]:
    """Start the command; wait for a unit not in ``output`` before; kill its group after
    ``after_s`` more seconds. Returns timings, peak memory and the progress lines seen."""
    before = units(output)
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    first_unit = None
    peak = 0.0
    while time.perf_counter() - started < timeout_s and proc.poll() is None:
        peak = max(peak, peak_rss_mb(proc.pid))
        if first_unit is None and units(output) - before:
            first_unit = time.perf_counter() - started
        if first_unit is not None and time.perf_counter() - started > first_unit + after_s:
            break
        time.sleep(0.2)
    peak = max(peak, peak_rss_mb(proc.pid))
    finished = proc.poll() is not None
    if not finished:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)  # the killed Ray's processes go
    log.seek(0)
    text = log.read()
    os.unlink(log.name)
    progress = [line for line in text.splitlines() if line.startswith("[tag]")]
    listed = re.findall(r"listed (\d+)", "\n".join(progress))
    skipped = re.findall(r"\((\d+) already tagged\)", "\n".join(progress))
    return {"first_unit_s": round(first_unit, 1) if first_unit is not None else None,
            "driver_peak_rss_mb": round(peak), "finished_by_itself": finished,
            "units_at_kill": len(units(output) - before), "listed_at_kill": int(listed[-1]) if listed else None,
            "already_tagged_reported": int(skipped[-1]) if skipped else None,
            "error_lines": [line for line in text.splitlines() if re.search(r"\bE \d+|core_worker|Traceback", line)][:5],
            "last_progress": progress[-1] if progress else None}


def add_committed(output: Path, sources: list[str], rows_per_unit: int = 20000) -> int:
    """Units for ``sources`` in ``output``, as if a run had tagged them: a committed row of
    the killed run is the template (same schema and model id), only ``source`` changes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    template = pq.read_table(sorted(output.glob("part-*.parquet"))[0]).slice(0, 1)
    written = 0
    for start in range(0, len(sources), rows_per_unit):
        chunk = sources[start:start + rows_per_unit]
        table = pa.concat_tables([template] * len(chunk))
        table = table.set_column(table.schema.get_field_index("source"), "source", pa.array(chunk, pa.string()))
        pq.write_table(table, output / f"part-19700101T000000-synthetic-{start // rows_per_unit:06d}.parquet")
        written += len(chunk)
    return written


def measure(input_uri: str, images: int, env: dict[str, str], overrides: list[str], after_s: float,
            timeout_s: float, resume_done: int = 0) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from emotion.tagging.inputs import list_inputs, plan_inputs

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        started = time.perf_counter()
        plan = plan_inputs(input_uri, "path", 10000)
        plan_s = time.perf_counter() - started
        started = time.perf_counter()
        entries = list_inputs(input_uri)
        list_s = time.perf_counter() - started
        listed = len(entries)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    output = Path(tempfile.mkdtemp(prefix="scale-out-"))
    command = [EMOTION, "tag", f"input={input_uri}", f"output={output}", "progress_every_s=5", *overrides]
    fresh = run_until_first_unit(command, output, env, after_s, timeout_s)
    kept = units(output)
    if resume_done:
        import pyarrow.parquet as pq

        committed = {s for u in output.glob("part-*.parquet") for s in pq.read_table(u, columns=["source"]).column(0).to_pylist()}
        resume_done = add_committed(output, [p for p, _ in entries if p not in committed][:resume_done])
        kept = units(output)
    del entries
    resumed = run_until_first_unit(command, output, env, after_s, timeout_s)
    result = {"input": input_uri, "images": images, "listed": listed, "shards": len(plan.shards),
              "plan_s": round(plan_s, 2), "list_whole_input_s": round(list_s, 1),
              "list_rate_per_s": round(listed / list_s) if list_s > 0 else None,
              "fresh": fresh, "resume": resumed, "units_kept_after_kill": kept <= units(output),
              "added_before_resume": resume_done,
              "command": " ".join(command[1:])}
    shutil.rmtree(output, ignore_errors=True)
    print(json.dumps(result), flush=True)
    return result


def s3_input(objects: int, seeds: list[Path]) -> tuple[str, dict[str, str], Any]:
    """A loopback S3 server (moto, in this process) holding ``objects`` images."""
    sys.path.insert(0, str(ROOT))
    from moto.server import ThreadedMotoServer

    from tests.s3_server import boto3_client, free_port, s3_env, seed_objects

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3_client(endpoint).create_bucket(Bucket="scale")
    bodies = [p.read_bytes() for p in seeds]
    started = time.perf_counter()
    for start in range(0, objects, PER_FOLDER):
        keys = [f"photos/{start // PER_FOLDER:05d}/{i:08d}.jpg" for i in range(start, min(start + PER_FOLDER, objects))]
        for n, key in enumerate(keys):
            seed_objects("scale", [key], bodies[(start + n) % len(bodies)])
    print(f"seeded {objects} objects in {time.perf_counter() - started:.0f} s", flush=True)
    return "s3://scale/photos/", s3_env(endpoint), server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--s3", type=int, default=100000, help="objects on the loopback S3 server (0: skip)")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "emotion-scale")
    parser.add_argument("--after-s", type=float, default=10.0, help="keep running this long past the first unit")
    parser.add_argument("--timeout-s", type=float, default=240.0)
    parser.add_argument("--override", action="append", default=[])
    parser.add_argument("--resume-done", type=int, default=0,
                        help="before the largest local input's resume, also commit this many of its images "
                             "(units made from a row of the killed run), so the resume checks a large output")
    parser.add_argument("--code", type=Path, default=None,
                        help="run the command with this tree first on PYTHONPATH (a worktree of other code)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("bench_scale_results.json"))
    args = parser.parse_args()
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    if args.code is not None:
        env["PYTHONPATH"] = str(args.code.resolve())
    seeds = seed_images()
    runs = []
    sizes = [int(s) for s in args.sizes.split(",") if s]
    for size in sizes:
        folder = build_tree(args.root / f"local-{size}", size, seeds)
        runs.append(measure(str(folder), size, env, args.override, args.after_s, args.timeout_s,
                            resume_done=args.resume_done if size == max(sizes) else 0))
    if args.s3:
        uri, s3_vars, server = s3_input(args.s3, seeds)
        try:
            runs.append(measure(uri, args.s3, {**env, **s3_vars}, args.override, args.after_s, args.timeout_s))
        finally:
            server.stop()
    import torch

    results = {"machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "torch": torch.__version__},
               "seed_images": len(seeds), "overrides": args.override, "runs": runs}
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\n{'input':<44}{'list/s':>9}{'1st unit':>10}{'RSS MB':>8}{'resume 1st':>11}{'RSS MB':>8}  kept")
    for r in runs:
        print(f"{r['input'][-44:]:<44}{r['list_rate_per_s'] or 0:>9}{r['fresh']['first_unit_s'] or -1:>10}"
              f"{r['fresh']['driver_peak_rss_mb']:>8}{r['resume']['first_unit_s'] or -1:>11}"
              f"{r['resume']['driver_peak_rss_mb']:>8}  {r['units_kept_after_kill']}")


if __name__ == "__main__":
    main()
