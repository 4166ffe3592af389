"""Benchmark: instructions per request of the balancer path, counted by callgrind.

requests/s on a shared machine move by tens of percent from run to run; the number
of instructions the front worker executes per request does not (within ~2%). This
runs bench_handler.py's backend and front (its config, one worker) with the front
under valgrind's callgrind, and counts, per location, the instructions of N
keepalive requests (after a warm-up that lets LuaJIT compile the path), less those
of nginx's timers (zedcup's background jobs):

- native:          proxy_pass to an upstream block (the baseline)
- floor_balancer:  balancer_by_lua setting one constant peer (nginx's Lua hook alone)
- floor:           the same plus an empty log_by_lua (both hooks balance mode needs)
- nolog:           zedcup.balance() in balancer_by_lua, no log()
- balance:         zedcup.balance() + zedcup.log() (the README's snippet)

Only user-space instructions are counted (the kernel's share of a request, its
socket calls, is the same on every location). Not a test: nothing is asserted.
-l takes other bench_handler.py locations too (native,raw,client,zedcup: the handler
path). Needs valgrind. Usage: .venv/bin/python bench/bench_balance_ir.py [-n REQUESTS]
                                        [-r ROUNDS] [-l LOCATIONS] [--lua-dir DIR]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_handler import FRONT_CONFIG, FRONT_HTTP
from benchlib import bench_servers, machine
from zedctl.testnginx import PortPicker

LOCATIONS = ("native", "floor_balancer", "floor", "nolog", "balance")


def get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{path} answered {resp.status}: {body[:200]!r}")
    return body


def callgrind(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def dumped_instructions(out_dir: Path, pid: int) -> tuple[int, int]:
    """(all instructions, those under ngx_event_expire_timers) of the last dump."""
    dumps = sorted(out_dir.glob(f"callgrind.out.{pid}.*"), key=os.path.getmtime)
    if not dumps:
        raise RuntimeError("callgrind wrote no dump")
    last = dumps[-1]
    text = last.read_text(errors="replace")
    total = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", str(last)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    timers = re.search(r"^\s*([\d,]+) \(.*ngx_event_expire_timers", annotated, re.M)
    for dump in dumps:
        dump.unlink()
    if not total:
        raise RuntimeError(f"no instruction total in {last}")
    return int(total.group(1)), int(timers.group(1).replace(",", "")) if timers else 0


def measure(port: int, pid: int, out_dir: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    get(conn, "/setup")
    results: dict[str, list[float]] = {name: [] for name in args.locations}
    for _ in range(args.rounds):
        for name in args.locations:
            for _ in range(args.warmup):
                get(conn, f"/{name}")
            callgrind(pid, "-i", "on")
            callgrind(pid, "-z")
            for _ in range(args.requests):
                get(conn, f"/{name}")
            callgrind(pid, "-d")
            callgrind(pid, "-i", "off")
            total, timers = dumped_instructions(out_dir, pid)
            results[name].append((total - timers) / args.requests)
    conn.close()
    return results


def report(results: dict[str, list[float]], args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    print(
        f"callgrind, front nginx 1 worker, {args.rounds} rounds of {args.requests} keepalive "
        f"requests per location (after {args.warmup} warm-up requests), timers excluded"
    )
    native = statistics.median(results["native"])
    floor = statistics.median(results["floor"]) if "floor" in results else None
    print(
        f"{'location':<15} {'instr/request':>13} {'min..max':>15} {'x native':>9} "
        f"{'over native':>12} {'over floor':>11}"
    )
    for name, values in results.items():
        med = statistics.median(values)
        print(
            f"{name:<15} {med:>13.0f} {min(values):>7.0f}..{max(values):<7.0f} "
            f"{med / native:>9.3f} {med - native:>12.0f} "
            f"{med - floor if floor is not None else float('nan'):>11.0f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--requests", type=int, default=4000, help="counted per location")
    parser.add_argument("-w", "--warmup", type=int, default=2000, help="requests before counting")
    parser.add_argument("-r", "--rounds", type=int, default=2, help="rounds over the locations")
    parser.add_argument(
        "-l",
        "--locations",
        default=",".join(LOCATIONS),
        help="bench_handler.py locations to count, comma-separated (native is always one)",
    )
    parser.add_argument(
        "--lua-dir", type=Path, help="a directory whose zedcup modules shadow lua/ (before/after)"
    )
    args = parser.parse_args()
    args.locations = [name for name in args.locations.split(",") if name]
    if "native" not in args.locations:
        args.locations.insert(0, "native")
    lua_dir = f"{args.lua_dir.resolve()}/?.lua;" if args.lua_dir else ""
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if not shutil.which(tool):
            print(f"bench_balance_ir: {tool} is not installed (valgrind)", file=sys.stderr)
            return 1

    vg: subprocess.Popen[bytes] | None = None
    with bench_servers(
        FRONT_HTTP, FRONT_CONFIG, front_port=PortPicker().pick(), lua_dir=lua_dir
    ) as (backend, front, tmp):
        try:
            for sub in ("conf", "logs", "html"):
                (front.servroot / sub).mkdir(parents=True, exist_ok=True)
            front.parts.make_dirs()
            front.conf_path.write_text(front.render())
            out_dir = tmp / "callgrind"
            out_dir.mkdir()
            with backend:
                log = (tmp / "valgrind.log").open("wb")
                vg = subprocess.Popen(
                    [
                        "valgrind",
                        "--tool=callgrind",
                        "--instr-atstart=no",
                        "--smc-check=all",  # LuaJIT writes the code it runs
                        f"--callgrind-out-file={out_dir}/callgrind.out.%p",
                        "nginx",
                        "-p",
                        f"{front.servroot}/",
                        "-c",
                        str(front.conf_path),
                    ],
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
                deadline = time.monotonic() + 120
                while True:
                    try:
                        conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=5)
                        get(conn, "/native")
                        conn.close()
                        break
                    except (OSError, RuntimeError):
                        if vg.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(
                                "the front nginx under valgrind did not start: "
                                + (tmp / "valgrind.log").read_text(errors="replace")[-2000:]
                            ) from None
                        time.sleep(0.5)
                results = measure(front.port, vg.pid, out_dir, args)
                vg.terminate()
                vg.wait(30)
                vg = None
        finally:
            if vg is not None:
                vg.kill()

    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
