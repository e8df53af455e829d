"""How soon a delete on one cache-host stops hits on another sharing its store.

    python bench/invalidation.py [--rounds N]

Two cache-hosts (curate mode) on one throwaway PostgreSQL and SeaweedFS, an
nginx origin. Each round stores a small artifact through host a (the API's
add), has host b answer a hit for it (so b's lookup memo holds it, for 30 s
while b hears the store), deletes it through a's API, and then asks b with
HEAD over one keep-alive connection until b answers a miss. Figures: the
time from sending the DELETE to b's first miss (an upper bound: it includes
a's own handling of the delete), and from a's answer to it; median, p95 and
the worst over the rounds. Target: within 100 ms.

Prints a table and writes bench/results/invalidation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from api import PASSWORD, Client, token
from common import Server, start_nginx, write_results

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from services import BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY, Postgres, SeaweedFS, free_ports

GIVE_UP = 5.0  # seconds b may take to stop serving before the round counts as failed


def stored(api: Client, url: str) -> int:
    """Add `url` through the API and wait until it is stored; its artifact id."""
    status, raw = api.call("POST", "/api/v1/fills", {"url": url})
    assert status in (200, 201, 202), raw
    fill = json.loads(raw)
    deadline = time.monotonic() + 60
    while fill["state"] != "done":
        assert fill["state"] in ("queued", "running") and time.monotonic() < deadline, fill
        time.sleep(0.01)
        fill = json.loads(api.call("GET", f"/api/v1/fills/{fill['id']}")[1])
    listing = json.loads(api.call("GET", f"/api/v1/artifacts?url={quote(url, safe='')}")[1])
    (artifact,) = listing["items"]
    return artifact["id"]


def one_round(api: Client, b: Client, url: str) -> tuple[float, float]:
    artifact_id = stored(api, url)
    path = f"/blob?url={quote(url, safe='')}"
    status, _ = b.call("HEAD", path)
    assert status == 200, status  # a hit: b remembers it now
    sent = time.perf_counter()
    status, raw = api.call("DELETE", f"/api/v1/artifacts/{artifact_id}")
    answered = time.perf_counter()
    assert status == 200, raw
    while b.call("HEAD", path)[0] == 200:
        assert time.perf_counter() - sent < GIVE_UP, "b kept serving a deleted artifact"
    missed = time.perf_counter()
    return (missed - sent) * 1000, (missed - answered) * 1000


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=100, help="deletes (default 100)")
    rounds = parser.parse_args().rounds
    work = Path(tempfile.mkdtemp(prefix="withcache-bench-invalidation-"))
    origin_dir = work / "origin"
    origin_dir.mkdir()
    for n in range(rounds):
        (origin_dir / f"f{n}.bin").write_bytes(os.urandom(4096))
    nginx = start_nginx(work / "nginx", origin_dir, free_ports(1)[0])
    postgres, seaweed = Postgres(), SeaweedFS(work / "weed")
    postgres.start()
    seaweed.start()
    store = ("--metadata", postgres.new_database(), "--blobs", f"s3://{BUCKET}/bench",
             "--s3-endpoint", seaweed.endpoint)  # fmt: skip
    env = {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
           "WITHCACHE_ADMIN_PASSWORD": PASSWORD}  # fmt: skip
    hosts = []
    try:
        for name in ("a", "b"):
            (work / name).mkdir()
            hosts.append(
                Server(work / name / "data", "--allow-private-origins", "--curate", *store, env=env)
            )
        a, b = hosts
        api, probe = Client(a.port, token(a.port)), Client(b.port)
        samples = [
            one_round(api, probe, f"http://127.0.0.1:{nginx.port}/f{n}.bin") for n in range(rounds)
        ]
    finally:
        for server in hosts:
            server.stop()
        nginx.stop()
        seaweed.stop()
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)
    from_sent = [s for s, _ in samples]
    from_answer = [s for _, s in samples]
    results = {
        "rounds": rounds,
        "ms_from_delete_sent": {"median": round(statistics.median(from_sent), 1),
                                "p95": round(p95(from_sent), 1), "max": round(max(from_sent), 1)},
        "ms_from_delete_answered": {"median": round(statistics.median(from_answer), 1),
                                    "p95": round(p95(from_answer), 1),
                                    "max": round(max(from_answer), 1)},
    }  # fmt: skip
    print(f"a delete on host a, then HEAD on host b until a miss: {rounds} deletes, ms")
    print(f"{'':28} {'median':>8} {'p95':>8} {'max':>8}")
    for label, key in (("from the DELETE sent", "ms_from_delete_sent"),
                       ("from a's answer", "ms_from_delete_answered")):  # fmt: skip
        row = results[key]
        print(f"{label:28} {row['median']:8.1f} {row['p95']:8.1f} {row['max']:8.1f}")
    verdict = "within" if results["ms_from_delete_sent"]["p95"] <= 100 else "over"
    print(f"p95 {verdict} the 100 ms target")
    print("wrote", write_results("invalidation", results))


if __name__ == "__main__":
    main()
