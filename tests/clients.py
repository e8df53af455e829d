"""Clients the black-box tests run side by side (curl and other commands),
how they ended, and waiting for what they cause."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def start(*argvs: list[str]) -> list[subprocess.Popen[bytes]]:
    """The commands, all started at once (their output kept)."""
    return [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for a in argvs]


def start_curls(*args_lists: list[str]) -> list[subprocess.Popen[bytes]]:
    """`curl -sS ARGS` for each list of ARGS, all at once."""
    return start(*(["curl", "-sS", *args] for args in args_lists))


def finish(
    procs: list[subprocess.Popen[bytes]], timeout: float = 60.0
) -> list[tuple[int, bytes, bytes]]:
    """(exit code, stdout, stderr) of each; a client still running after
    `timeout` seconds fails the test (and is killed)."""
    deadline = time.monotonic() + timeout
    ended = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            ended.append((proc.returncode, out, err))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"a client hung for over {timeout} s") from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return ended


def wait_until(check: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll `check` until it returns something true, and return that; fail
    the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"no {what} after {timeout} s")


def exit_codes(procs: list[subprocess.Popen[bytes]], timeout: float = 60.0) -> list[int]:
    """Just the exit codes of `finish`."""
    return [code for code, _, _ in finish(procs, timeout)]
