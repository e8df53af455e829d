"""The soak: one cache-host under mixed load (hits, misses, streaming
clients, ranges; real curl and wget) while faults are injected (a lying and
breaking origin, blobs cut short or rotten on disk, a disk filled by another
writer, kill -9 and restart), then judged.

Every client that exits 0 must hold a whole version the origin served (or,
for a body framed only by closing the connection, what the origin itself
would have given), or the exact slice of one for a range; a client may fail
(a fault hit it), but never quietly. Bytes are flipped only in blobs the read
path re-hashes (256 KiB or less): a flip in a bigger one is served until the
scrub reaches it, by design; a cut (at rest) is caught in blobs of any size. No
answer may be a 5xx. At the end the host must be healthy, every stored blob
must hash to its name and hold a version of its URL, and the process must
hold no more descriptors and not much more memory than after its warm-up.

tests/test_faults.py runs it for WITHCACHE_SOAK_SECONDS (15 by default).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

KB, MB = 1000, 1_000_000
FD_BOUND = 16  # descriptors the process may hold beyond its count after warm-up
RSS_BOUND_MIB = 64  # memory growth allowed over the soak, after warm-up
SMALL_BODY = 256 * 1024  # blobs re-hashed on every read (web/hit.py)


@dataclass
class Artifact:
    path: str
    versions: list[bytes]  # every body the origin has served whole
    cut: int | None = None  # close-delimited and cut short here: this prefix is valid too
    weight: int = 1

    def valid(self, data: bytes, first: int | None) -> bool:
        bodies = [*self.versions, *([self.versions[0][: self.cut]] if self.cut else [])]
        if first is None:
            return any(data == body for body in bodies)
        return any(data == body[first:] for body in bodies)


@dataclass
class Figures:
    seconds: float = 0.0
    requests: int = 0
    exits: Counter[str] = field(default_factory=Counter)  # "curl 0", "wget 8", ...
    statuses: Counter[int] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)  # exit 0 with bytes no version has
    server_errors: list[str] = field(default_factory=list)  # 5xx answers
    faults: Counter[str] = field(default_factory=Counter)
    longest_client: float = 0.0
    fds: tuple[int, int] = (0, 0)  # after warm-up, at the end
    rss_mib: tuple[float, float] = (0.0, 0.0)
    stored_artifacts: int = 0
    bad_stored: list[str] = field(default_factory=list)
    unsettled: str | None = None  # fills still active, or the host unhealthy, at the end

    def summary(self) -> dict[str, object]:
        return {
            "seconds": round(self.seconds, 1), "requests": self.requests,
            "exits": dict(sorted(self.exits.items())),
            "statuses": dict(sorted(self.statuses.items())),
            "wrong": len(self.wrong), "server_errors": len(self.server_errors),
            "faults": dict(sorted(self.faults.items())),
            "longest_client_s": round(self.longest_client, 1), "fds": self.fds,
            "rss_mib": tuple(round(r, 1) for r in self.rss_mib),
            "stored_artifacts": self.stored_artifacts, "bad_stored": len(self.bad_stored),
            "unsettled": self.unsettled,
        }  # fmt: skip


def _differs(artifact: Artifact, data: bytes) -> str:
    """How `data` differs from the artifact's latest version: for the report."""
    body = artifact.versions[-1]
    at = next((n for n, (a, b) in enumerate(zip(data, body, strict=False)) if a != b), None)
    return f"{len(data)} bytes, the version has {len(body)}, first difference at {at}"


class Soak:
    def __init__(self, origin, host, disk: Path, folder: Path, seconds: float, seed: int = 13):
        self.origin, self.host, self.disk, self.folder = origin, host, disk, folder
        self.seconds = seconds
        self.random = random.Random(seed)
        self.figures = Figures()
        self.artifacts: dict[str, Artifact] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._paused = threading.Event()  # clients wait while the host restarts
        self._paused.set()
        self._add_artifacts()

    # -- set-up

    def _add(self, path: str, body: bytes, weight: int = 1, cut: int | None = None, **options):
        self.origin.add(path, body, **options)
        self.artifacts[path] = Artifact(path, [body], cut, weight)

    def _add_artifacts(self) -> None:
        r = self.random
        for n in range(8):  # small: re-hashed on every read
            self._add(f"/soak/small{n}.bin", os.urandom(r.randrange(5 * KB, 250 * KB)), weight=3)
        for n in range(4):
            self._add(f"/soak/large{n}.bin", os.urandom(r.randrange(300 * KB, 3 * MB)), weight=2)
        for n in range(2):  # streamed to their first clients while they arrive
            self._add(f"/soak/slow{n}.bin", os.urandom(4 * MB), rate=3 * MB, etag=f'"s{n}"')
        for n in range(2):  # break off again and again: resumed with Range
            self._add(f"/soak/flaky{n}.bin", os.urandom(2 * MB), etag=f'"f{n}"',
                      die_after=600 * KB, die_times=10**9, rate=6 * MB)  # fmt: skip
        self._add("/soak/chunked.bin", os.urandom(MB), chunked=True)
        self._add("/soak/close.bin", os.urandom(MB), close_delimited=True, die_after=400 * KB,
                  die_times=10**9, cut=400 * KB)  # fmt: skip
        self._add("/soak/liar.bin", os.urandom(2 * MB), etag='"l0"', rate=3 * MB)

    # -- clients

    def _client(self, number: int) -> None:
        r = random.Random(number)
        paths = [a.path for a in self.artifacts.values() for _ in range(a.weight)]
        target = self.folder / f"client{number}"
        while not self._stop.is_set():
            self._paused.wait()
            artifact = self.artifacts[r.choice(paths)]
            tool = r.choices(["curl", "wget", "range"], [6, 3, 2])[0]
            size = len(artifact.versions[-1])
            first = r.randrange(0, min(size, 200 * KB)) if tool == "range" else None
            self._request(artifact, tool, first, target)

    def _request(self, artifact: Artifact, tool: str, first: int | None, target: Path) -> None:
        url = self.host.blob_url(self.origin.url(artifact.path))
        target.unlink(missing_ok=True)
        if tool == "wget":
            argv = ["wget", "-S", "-t", "1", "-T", "30", "-O", str(target), url]
        else:
            argv = ["curl", "-sS", "-f", "-m", "30", "-o", str(target), "-w", "%{http_code}"]
            argv += ["-r", f"{first}-"] if first is not None else []
            argv.append(url)
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, timeout=60)
        self._judge(artifact, tool, first, done, target, time.monotonic() - started)

    def _judge(self, artifact, tool, first, done, target: Path, took: float) -> None:
        if tool == "wget":
            statuses = [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3})", done.stderr)]
        else:
            statuses = [int(done.stdout)] if done.stdout.isdigit() and int(done.stdout) else []
        data = target.read_bytes() if done.returncode == 0 and target.exists() else b""
        ranged = first is not None and statuses[-1:] == [206]  # a 200 is the whole body
        with self._lock:
            f = self.figures
            f.requests += 1
            f.exits[f"{'curl' if tool != 'wget' else 'wget'} {done.returncode}"] += 1
            f.statuses.update(statuses)
            f.longest_client = max(f.longest_client, took)
            if any(status >= 500 for status in statuses):
                f.server_errors.append(f"{artifact.path} {tool}: {statuses}")
            if done.returncode == 0 and not artifact.valid(data, first if ranged else None):
                f.wrong.append(f"{artifact.path} {tool} from {first}: {_differs(artifact, data)}")

    # -- faults

    def _blob_files(self, largest: int | None = None) -> list[Path]:
        found = [p for p in (self.host.data_dir / "blobs").rglob("*") if p.is_file()]
        return [p for p in found if largest is None or p.stat().st_size <= largest]

    def _fault(self, kind: str) -> None:
        r = self.random
        if kind in ("truncate", "flip"):
            blobs = self._blob_files(None if kind == "truncate" else SMALL_BODY)
            if not blobs:
                return
            blob = r.choice(blobs)
            if kind == "truncate":
                # Damage at rest, as a crash or a broken restore leaves it: a
                # shorter file under the blob's name. (Cutting a file that is
                # being sent zeroes pages in flight: see web/hit.py _sendfile.)
                cut = blob.with_name(f"{blob.name}.cut")
                cut.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
                os.replace(cut, blob)
                self.figures.faults[kind] += 1
                return
            with open(blob, "r+b") as rot:
                size = os.fstat(rot.fileno()).st_size
                if size:
                    at = r.randrange(size)
                    rot.seek(at)
                    byte = rot.read(1)
                    rot.seek(at)
                    rot.write(bytes([byte[0] ^ 0x10]))
        elif kind == "disk full":
            from test_faults import DiskFiller

            filler = DiskFiller(self.disk).start()
            filler.full.wait(5)
            time.sleep(1.5)
            filler.stop()
        elif kind == "new version":
            liar = self.origin.resources["/soak/liar.bin"]
            new = os.urandom(2 * MB)
            with self._lock:
                self.artifacts["/soak/liar.bin"].versions.append(new)
            # Breaks off mid-transfer, then answers the resume with the new bytes.
            liar.after_dying = {"body": new, "etag": f'"l{len(self.artifacts)}{new[:4].hex()}"'}
            liar.die_after, liar.die_times, liar.if_range = MB, 1, False
        elif kind == "kill -9":
            self._paused.clear()
            time.sleep(0.2)
            self.host.kill()
            self.host.start()
            self._paused.set()
        self.figures.faults[kind] += 1

    def _inject(self, warm_up_done: threading.Event) -> None:
        started = time.monotonic()
        killed = False
        kinds: list[str] = []
        while not self._stop.wait(1.0):
            elapsed = time.monotonic() - started
            if not killed and elapsed > self.seconds * 0.2:
                self._fault("kill -9")
                killed = True
                continue
            if killed and not warm_up_done.is_set() and elapsed > self.seconds * 0.35:
                self.figures.fds = (self._fds(), 0)
                self.figures.rss_mib = (self._rss_mib(), 0.0)
                warm_up_done.set()
            if elapsed < self.seconds * 0.9:
                if not kinds:  # each kind in turn, in a shuffled order
                    kinds = ["truncate", "flip", "disk full", "new version"]
                    self.random.shuffle(kinds)
                try:
                    self._fault(kinds.pop())
                except OSError:  # the disk is full, or a blob was quarantined meanwhile
                    self.figures.faults["skipped"] += 1

    # -- the process

    def _fds(self) -> int:
        return len(os.listdir(f"/proc/{self.host.proc.pid}/fd"))

    def _rss_mib(self) -> float:
        status = Path(f"/proc/{self.host.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) / 1024

    def _settled(self) -> bool:
        busy = self.host.rows("SELECT count(*) FROM fills WHERE state IN ('queued', 'running')")
        return busy[0][0] == 0

    def _wait_settled(self) -> None:
        deadline = time.monotonic() + 30
        while not (self._settled() and self.host.health()["status"] == "ok"):
            if time.monotonic() > deadline:
                self.figures.unsettled = f"active fills or unhealthy: {self.host.health()}"
                return
            time.sleep(0.2)

    def _check_store(self) -> None:
        rows = self.host.rows("SELECT key, sha256 FROM artifacts")
        self.figures.stored_artifacts = len(rows)
        for key, sha256 in rows:
            path = key.split("/", 3)[3]
            data = (self.host.data_dir / "blobs" / sha256[:2] / sha256).read_bytes()
            artifact = self.artifacts[f"/{path}"]
            if hashlib.sha256(data).hexdigest() != sha256 or data not in artifact.versions:
                self.figures.bad_stored.append(key)

    # -- the run

    def run(self, clients: int = 6) -> Figures:
        warm = threading.Event()
        threads = [threading.Thread(target=self._client, args=(n,)) for n in range(clients)]
        injector = threading.Thread(target=self._inject, args=(warm,))
        started = time.monotonic()
        for thread in [*threads, injector]:
            thread.start()
        time.sleep(self.seconds)
        self._stop.set()
        for thread in [injector, *threads]:
            thread.join(90)
        self.figures.seconds = time.monotonic() - started
        self._wait_settled()
        # One more read of each: a blob damaged late is found now, not left in the store.
        for artifact in self.artifacts.values():
            self._request(artifact, "curl", None, self.folder / "last")
        self._wait_settled()
        time.sleep(1.0)  # connections of the last clients close
        self.figures.fds = (self.figures.fds[0], self._fds())
        self.figures.rss_mib = (self.figures.rss_mib[0], self._rss_mib())
        self._check_store()
        return self.figures
