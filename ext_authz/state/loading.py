"""Opening what a store holds: a stored record verified, decoded and checked against this replica's
settings (:func:`open_stored`), and for a large load, a second process that verifies beside the one that
builds the snapshot (:class:`Verifier`).

Why a second process. Reading a million records costs about 10 us a record of Python, on one core. About
half of it is verifying (the record's MAC; decoding it and checking it against the settings), which must
happen before a record is trusted; the other half is making the records this process keeps and indexing
them. The verifier does the first half for a page of stored text and answers which rows it refused; this
process decodes the accepted rows from that same text (:func:`decode_verified`: nothing checked again) and
files them, while the verifier works on the next pages. Two cores, about half the time.

What it is trusted with: the verifier is this program, spawned (never forked: this process runs threads)
with the MAC key and the settings handed over its pipe (never on the command line or in the
environment). It reads nothing itself; it sees the pages this process read. It is started only once a
load has read ``VERIFY_ASIDE_AFTER`` records (a smaller store loads faster alone), and stopped when the
load ends. Until it is ready, and if it cannot start or fails, pages are verified here as before, in the
order they were read: same result, slower, and a warning says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import pickle
import sys
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar

import orjson

from ..settings import Settings
from .commands import InvalidArgument, check_record
from .integrity import IntegrityError, Sealer
from .records import RECORD_TYPES, Record, RecordError, decode

__all__ = [
    "AHEAD",
    "VERIFY_ASIDE_AFTER",
    "Answer",
    "Refusal",
    "Verifier",
    "open_stored",
    "read_ahead",
]

log = logging.getLogger("ext_authz.state")

VERIFY_ASIDE_AFTER = 20_000  # records read in-process before a load starts a verifier beside it
PIPE_BYTES = 1 << 20  # the pipe to the verifier: a page is about 0.8 MB (Linux allows 1 MB unprivileged)
AHEAD = 8  # pages sent to the verifier and not yet answered, at most

Row = tuple[str, str, str]  # kind, id, stored body
Answer = asyncio.Future[list[tuple[int, str, str]]]  # the verifier's, for one page: the rows it refused


class Refusal(NamedTuple):
    reason: str  # unknown_kind | malformed | unauthenticated | legacy | invalid
    detail: str


def open_stored(
    sealer: Sealer, settings: Settings, op: str, kind: str, rid: str, body: str
) -> Record | Refusal:
    """The record a stored body holds, if it is authentic and one ``settings`` would have made."""
    if not isinstance(kind, str) or kind not in RECORD_TYPES:
        return Refusal("unknown_kind", "not a kind of record this version knows")
    if not isinstance(rid, str) or not isinstance(body, str):
        return Refusal("malformed", "not text")
    try:
        record = decode(kind, sealer.open(op, kind, rid, body))
    except IntegrityError as exc:
        return Refusal(exc.reason, str(exc))
    except RecordError as exc:
        return Refusal("malformed", str(exc))
    except (ValueError, TypeError, RecursionError) as exc:  # whatever else odd input raises: never a crash
        return Refusal("malformed", f"cannot be read ({type(exc).__name__})")
    if record.record_id != rid:
        return Refusal("malformed", "stored under another id than its own")
    try:
        check_record(record, settings)
    except InvalidArgument as exc:
        return Refusal("invalid", str(exc))
    except (ValueError, TypeError, RecursionError) as exc:
        return Refusal("invalid", f"cannot be checked ({type(exc).__name__})")
    return record


P = TypeVar("P")


async def read_ahead(pages: AsyncIterator[P]) -> AsyncIterator[P]:
    """``pages``, the next one being read (a store's round trip, a thread's query) while the caller
    works on the last one."""
    coming: asyncio.Task[P] = asyncio.ensure_future(anext(pages))
    try:
        while True:
            try:
                page = await coming
            except StopAsyncIteration:
                return
            coming = asyncio.ensure_future(anext(pages))
            yield page
    finally:
        coming.cancel()


# --- the verifier process -------------------------------------------------------------------------------
# Frames on its stdin: the key and settings (pickled: from this program, to itself), then one page of rows
# per frame (JSON). On its stdout: an empty frame once ready, then per page the rows it refused (JSON),
# in order. A frame is a 4-byte big-endian length and that many bytes.


def _refusals(sealer: Sealer, settings: Settings, rows: Sequence[Row]) -> list[tuple[int, str, str]]:
    """(row number, reason, detail) of each row refused; every other row is accepted."""
    refused = []
    for i, (kind, rid, body) in enumerate(rows):
        opened = open_stored(sealer, settings, "put", kind, rid, body)
        if isinstance(opened, Refusal):  # the detail may quote stored text: made fit to cross the pipe
            refused.append((i, opened.reason, opened.detail.encode("utf-8", "backslashreplace").decode()))
    return refused


def _frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    size = int.from_bytes(head, "big")
    body = stream.read(size)
    return body if len(body) == size else None


def _put(stream: BinaryIO, data: bytes) -> None:
    stream.write(len(data).to_bytes(4, "big"))
    stream.write(data)
    stream.flush()


def serve_verifier(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The verifier process's work, until its stdin ends."""
    gc.disable()  # records are made and dropped; nothing here makes cycles
    opening = _frame(stdin)
    if opening is None:
        return
    key, settings = pickle.loads(opening)  # noqa: S301 - written by the process that started this one
    sealer = Sealer(key)
    _put(stdout, b"")
    while (page := _frame(stdin)) is not None:
        _put(stdout, orjson.dumps(_refusals(sealer, settings, orjson.loads(page))))


def cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> float:
    """The cores this process may use: the CPUs it may run on, or its cgroup's CPU quota if lower (a
    container limited to one CPU gains nothing from a second process, and would be throttled)."""
    n = float(len(os.sched_getaffinity(0)))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            n = min(n, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return n


class Verifier:
    """A process that verifies pages of stored rows for one load (see the module's docstring)."""

    STALL = 10.0  # seconds without the answer a page waits for: the verifier is given up (killed)

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._answers: deque[Answer] = deque()
        self._started = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        self.failed = ""  # why it is not used (any longer), once it failed

    @classmethod
    async def start(cls, key: bytes | None, settings: Settings) -> Verifier | None:
        """A verifier starting (ready later), or None where one would not help or cannot start."""
        if cores() < 2:
            return None
        try:
            process = await asyncio.create_subprocess_exec(  # -P: ext_authz as installed, not from the cwd
                sys.executable,
                "-P",
                "-m",
                __name__,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            log.warning("state: loading on one core (a second process cannot start: %s)", exc)
            return None
        with contextlib.suppress(
            OSError, AttributeError
        ):  # room for whole pages: the loop writes them in turns
            transport = process.stdin.transport if process.stdin is not None else None
            fd = transport.get_extra_info("pipe").fileno() if transport is not None else None
            if fd is not None:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        verifier = cls(process)
        verifier._send(pickle.dumps((key, settings)))
        return verifier

    def _send(self, data: bytes) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(len(data).to_bytes(4, "big"))
        stdin.write(data)

    async def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        try:
            await stdout.readexactly(int.from_bytes(await stdout.readexactly(4), "big"))
            self._started.set_result(None)
            while True:
                frame = await stdout.readexactly(int.from_bytes(await stdout.readexactly(4), "big"))
                self._answers.popleft().set_result(
                    [(i, why, detail) for i, why, detail in orjson.loads(frame)]
                )
        except (asyncio.IncompleteReadError, OSError, ValueError, IndexError) as exc:
            self.fail("stopped", exc)

    @property
    def ready(self) -> bool:
        return not self.failed and self._started.done()

    def fail(self, why: str, exc: BaseException | None = None) -> None:
        """Stop using the verifier: the pages it has not answered are verified here."""
        if not self.failed:
            self.failed = why
            log.warning("state: verifying the rest of this load here: the second process %s (%s)", why, exc)
        while self._answers:
            answer = self._answers.popleft()
            if not answer.done():
                answer.set_exception(RuntimeError(f"the verifier {why}"))
                answer.exception()  # retrieved: whoever awaits it is told, and nobody else need be

    def verify(self, rows: Sequence[Row]) -> Answer | None:
        """The answer for one page, to come; None once the verifier failed, or for a page that cannot be
        sent (a field that is not text: this process refuses it)."""
        if self.failed:
            return None
        try:
            page = orjson.dumps(rows)
        except (TypeError, orjson.JSONEncodeError):
            return None
        answer: Answer = asyncio.get_running_loop().create_future()
        self._answers.append(answer)
        self._send(page)
        return answer

    async def refusals(self, answer: Answer) -> list[tuple[int, str, str]]:
        """The rows of a page the verifier refused; RuntimeError (that page is then verified here) if it
        failed, or gave no answer within STALL seconds (it is then killed and not used again)."""
        try:
            return await asyncio.wait_for(asyncio.shield(answer), self.STALL)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            self.fail("stalled")
            raise RuntimeError("the verifier stalled") from None

    async def close(self) -> None:
        """Stop it (its stdin ends), and wait for it to exit (killed if it does not within 2 s)."""
        self._reader.cancel()
        if self._answers:
            self.fail("was stopped")
        stdin = self._process.stdin
        assert stdin is not None
        stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 2)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()


if __name__ == "__main__":
    serve_verifier(sys.stdin.buffer, sys.stdout.buffer)
