"""The snapshot a replica keeps by changing it record by record answers every question exactly as a
snapshot built afresh from the records it holds; its counts match a count of them; what it forgot is
what ended past the retention. Property-based: random sequences of writes, lifts, deletes and time."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_authz.clock import FixedClock
from ext_authz.settings import QuarantineSettings, Settings
from ext_authz.state import replica as replica_module
from ext_authz.state.backends.memory import MemoryLog
from ext_authz.state.records import ExceptionGrant, Grant, Revocation, Scope, Signal
from ext_authz.state.replica import FOLD_FROM, Replica
from ext_authz.state.snapshot import StateSnapshot
from tests import factories

T = 1_900_000_000.0
RETENTION = 600.0
WHO = [
    "spiffe://example.org/ns/a/sa/x",
    "spiffe://example.org/ns/b/sa/y",
    "https://idp.example.com#alice",
    "https://idp.example.com#bob",
]
DEVICES = ["LAPTOP-1", "LAPTOP-2"]
SETTINGS = Settings(quarantine=QuarantineSettings(denials=3, duration=900))

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("revoke"),
            st.integers(0, 5),
            st.sampled_from(WHO + DEVICES),
            st.one_of(st.none(), st.floats(-900, 900)),
        ),
        st.tuples(st.just("lift"), st.integers(0, 5)),
        st.tuples(st.just("delete"), st.integers(0, 5)),
        st.tuples(st.just("grant"), st.integers(0, 3), st.sampled_from(WHO[:2]), st.floats(-900, 900)),
        st.tuples(st.just("exception"), st.integers(0, 3), st.sampled_from(WHO), st.floats(-900, 900)),
        st.tuples(
            st.just("signal"),
            st.sampled_from(DEVICES),
            st.sampled_from(["posture", "risk"]),
            st.sampled_from(["a", "b"]),
            st.floats(-900, 900),
        ),
        st.tuples(st.just("wait"), st.floats(0, 1200)),
        st.tuples(st.just("yield"), st.integers(1, 4)),  # let a fold in progress take steps
    ),
    max_size=40,
)


def revocation(i: int, value: str, expires: float | None, now: float) -> Revocation:
    kind = "device" if value in DEVICES else ("spiffe_id" if value.startswith("spiffe://") else "sub")
    return factories.revocation(
        f"rev_{i}",
        kind,
        value,
        created_at=now - 1000,  # made earlier, so that it may have ended already
        expires_at=None if expires is None else now + expires,
        reason="test",
        created_by="ops",
    )


def same_answers(kept: StateSnapshot, fresh: StateSnapshot, now: float) -> None:
    for value in WHO + DEVICES:
        for kind in ("spiffe_id", "sub", "device"):
            assert kept.revoked(kind, value, now) == fresh.revoked(kind, value, now)
            assert kept.revoked(kind, value, now, issued_at=int(now)) == fresh.revoked(
                kind, value, now, issued_at=int(now)
            )
        assert kept.grants_for([value], now) == fresh.grants_for([value], now)
        assert kept.exceptions_for([value], now) == fresh.exceptions_for([value], now)
    for device in DEVICES:
        assert kept.signals_for("device", device, now) == fresh.signals_for("device", device, now)
        assert kept.signal("device", device, "risk", now) == fresh.signal("device", device, "risk", now)
    for cls in (Revocation, Grant, ExceptionGrant, Signal):
        assert sorted(map(repr, kept.all(cls))) == sorted(map(repr, fresh.all(cls)))


async def play(steps: list[tuple[object, ...]], fold_from: int) -> None:
    replica_module.FOLD_FROM = fold_from  # small: folds happen, and changes keep coming while they run
    clock = FixedClock(datetime.fromtimestamp(T, UTC))
    replica = Replica(MemoryLog(interval=3600), lambda: SETTINGS, clock=clock, retention=RETENTION)
    await replica.start()
    try:
        for step in steps:
            now = clock.now().timestamp()
            match step:
                case ("revoke", int(i), str(value), expires):
                    await replica.put(revocation(i, value, expires, now))  # type: ignore[arg-type]
                case ("lift", int(i)):
                    rev = replica.get(Revocation, f"rev_{i}")
                    if rev is not None and rev.ended_at is None:
                        ended = dataclasses.replace(rev, ended_at=now, ended_by="ops", end_reason="done")
                        await replica.put(ended)
                case ("delete", int(i)):
                    await replica.delete(Revocation, f"rev_{i}", action="delete", actor="ops")
                case ("grant", int(i), str(who), float(length)):
                    start = now + min(length, 0)
                    grant = Grant(
                        id=f"grt_{i}",
                        principal=who,
                        scope=Scope(paths=("/x",)),
                        not_before=start,
                        not_after=start + abs(length) + 1,
                        reason="r",
                        approver="bob",
                        created_by="alice",
                        created_at=now - 1000,
                        approved_at=now - 1000,
                    )
                    await replica.put(grant)
                case ("exception", int(i), str(who), float(length)):
                    exception = ExceptionGrant(
                        id=f"exc_{i}",
                        principal=who,
                        scope=Scope(paths=("/x",)),
                        reason="r",
                        opened_by="oncall",
                        opened_at=now - 1000,
                        expires_at=now + length,
                        approved_by="lead",
                        approved_at=now - 1000,
                    )
                    await replica.put(exception)
                case ("signal", str(device), str(key), str(value), float(ttl)):
                    await replica.put(Signal("device", device, key, value, "mdm", now - 1000, now + ttl))
                case ("wait", float(seconds)):
                    clock.at = datetime.fromtimestamp(now + seconds, UTC)
                    await replica.maintain()
                case ("yield", int(times)):
                    for _ in range(times):
                        await asyncio.sleep(0)
            now = clock.now().timestamp()
            revs = list(replica.snapshot.all(Revocation))
            grants = list(replica.snapshot.all(Grant))
            exceptions = list(replica.snapshot.all(ExceptionGrant))
            signals = list(replica.snapshot.all(Signal))
            fresh = StateSnapshot.build(0, revs, grants, exceptions, signals)
            same_answers(replica.snapshot, fresh, now)
            # the snapshot holds what the replica holds
            for cls, records in (
                (Revocation, revs),
                (Grant, grants),
                (ExceptionGrant, exceptions),
                (Signal, signals),
            ):
                assert sorted(map(repr, replica.all(cls))) == sorted(map(repr, records))
            # nothing held ended more than the retention ago
            held: list[Revocation | Grant | ExceptionGrant | Signal] = [*revs, *grants, *exceptions, *signals]
            for r in held:
                end = r.finished_at()
                assert end is None or end + RETENTION >= now - 1
            # the counts are a count of what is held
            counted: dict[str, int] = {}
            for rev in revs:
                if rev.active(now):
                    counted[rev.kind] = counted.get(rev.kind, 0) + 1
            assert replica.active_revocations(now) == counted
    finally:
        await replica.close()
        replica_module.FOLD_FROM = FOLD_FROM


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.sampled_from([FOLD_FROM, 1, 3]))
def test_a_snapshot_changed_record_by_record_is_the_one_built_afresh(
    steps: list[tuple[object, ...]], fold_from: int
) -> None:
    asyncio.run(play(steps, fold_from))
