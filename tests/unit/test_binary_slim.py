"""The binary window holding written notifications by position (core/slim.py): confirmed whole, read back exactly
when the gateway names one or a connection is lost, and nothing lost or doubled while they cannot be read."""

from __future__ import annotations

import structlog
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from apnsd import metrics
from apnsd.config import AppConfig
from apnsd.core.jobs import JobParser, Notification
from apnsd.core.outcomes import DELIVERED, Kind
from apnsd.core.pacing import outage_delay
from apnsd.core.slim import Slim
from apnsd.gateway.binary_session import SLIM_AGE, BinarySession
from apnsd.gateway.session import MAX_LOSSES, Resolved, State
from apnsd.store.queue import Commit
from apnsd.wire import binary
from apnsd.worker.recorder import Batch, OutcomeRecorder
from tests.support.fake_transport import FakeTransport

PARSER = JobParser({"default": ("binary", 2048, 2048)})


class BatchList:
    """The delivery loop's part: a batch whose jobs stay readable by position, as its in-flight list in Redis."""

    def __init__(self, count: int, stamped: bool = False) -> None:
        stamp = b',"enqueued_at":1000.5' if stamped else b""
        self.raws = [b'{"token":"%064x","payload":{"aps":{}}%s}' % (i + 1, stamp) for i in range(count)]
        self.batch = Batch(Commit("q", "1"))
        self.notes, _ = PARSER.parse_many(self.raws, self.batch, indexed=True)
        self.batch.unresolved = dict.fromkeys(self.notes)
        self.batch.remaining = count
        self.up = True  # False: Redis unavailable
        self.reads = 0
        self.attempts = 0  # reads asked for, failed ones included
        self.rewritten = False  # a partial commit moved what stays in flight out of the list: positions are stale

    def hydrate(self, slims: list[Slim]) -> list[list[Notification]] | None:
        """What worker/readback.py does for the delivery loop, from memory."""
        self.attempts += 1
        if not self.up:
            return None
        assert not self.rewritten, "read back by position from a list a partial commit rewrote"
        self.reads += 1
        out = []
        for s in slims:
            back = []
            for p in s.positions:
                s.batch.slimmed -= 1
                (n,), _ = PARSER.parse_many([self.raws[p]], s.batch)
                n.index, n.losses = p, s.losses
                s.batch.unresolved[n] = None
                back.append(n)
            out.append(back)
        return out


def connected(store: BatchList, now: float = 0.0) -> tuple[BinarySession, FakeTransport]:
    """A session on a fresh fake connection that reads slimmed notifications back from ``store``."""
    s = BinarySession("default", AppConfig(protocol="binary"), FakeTransport, structlog.get_logger())
    s.hydrate = store.hydrate
    return s, reconnect(s, now)


def reconnect(s: BinarySession, now: float) -> FakeTransport:
    t = FakeTransport()
    t.connect()
    s.transport, s.state = t, State.OPEN
    s.on_connected(now)
    return t


def write_all(s: BinarySession, t: FakeTransport, notes: list[Notification], now: float) -> None:
    s.submit(notes)
    for _ in range(len(notes)):
        s.send_pending(now)
        t.flush()
    assert not s.pending
    s.on_timer(now)


def tokens(out: Resolved) -> list[tuple[str, Kind]]:
    """(token, outcome) per notification, a Slim's read from the batch it holds positions of."""
    return [(n.token, o.kind) for n, o in expand(out)]


def expand(out: Resolved) -> list[tuple[Notification, object]]:
    result = []
    for e, o in out:
        if isinstance(e, Slim):
            result += [(STORE_OF[id(e.batch)].notes[p], o) for p in e.positions]
        else:
            result.append((e, o))
    return result


STORE_OF: dict[int, BatchList] = {}


def store_of(count: int, stamped: bool = False) -> BatchList:
    b = BatchList(count, stamped)
    STORE_OF[id(b.batch)] = b
    return b


def wire_frames(data: bytes) -> list[tuple[int, str]]:
    """(identifier, device token) of each frame on the wire, in order."""
    out, pos = [], 0
    while pos < len(data):
        assert data[pos] == 2
        end = pos + 5 + int.from_bytes(data[pos + 1 : pos + 5], "big")
        items, pos = data[pos + 5 : end], end
        found: dict[int, bytes] = {}
        while items:
            size = int.from_bytes(items[1:3], "big")
            found[items[0]] = items[3 : 3 + size]
            items = items[3 + size :]
        out.append((int.from_bytes(found[3], "big"), found[1].hex()))
    return out


def wire_tokens(data: bytes) -> list[str]:
    """The device tokens of the frames on the wire, in order."""
    return [token for _, token in wire_frames(data)]


def test_written_frames_are_held_by_position_and_confirmed_whole():
    """1,000 written frames leave no notification object behind: the batch holds none, the window only positions;
    silence confirms them in one piece, and that completes the batch."""
    store = store_of(1000)
    s, t = connected(store)
    write_all(s, t, store.notes, 0.0)

    assert (0, 1000, 1000) == (len(store.batch.unresolved), store.batch.slimmed, s.unanswered_count())
    assert all(isinstance(e, Slim) for e in s._old) and not s._window
    assert sum(len(e) for e in s._old) == 1000 and len(s._old) <= 3  # runs of one batch join

    out = s.on_timer(0.3)

    assert [(n.token, Kind.DELIVERED) for n in store.notes] == tokens(out)
    done = OutcomeRecorder({}, results=False).record_all(out, 0.3)
    assert [store.batch] == done and {"delivered": 1000} == store.batch.commit.counts
    assert (0, 0) == (store.batch.slimmed, store.reads)


def test_an_error_naming_a_held_frame_reads_back_that_job_and_the_ones_after_it():
    """The gateway names frame 6 of 10: five are delivered without being read back, the sixth is read back for its
    dead-letter entry, the last four are read back and written again on the next connection from the kept bytes."""
    store = store_of(10)
    s, t = connected(store)
    write_all(s, t, store.notes, 0.0)
    t.feed(binary.encode_error_response(8, 6))
    t.hang_up()

    out = s.step(0.01, True)

    sent = store.notes
    assert [(n.token, Kind.DELIVERED) for n in sent[:5]] + [(sent[5].token, Kind.UNREGISTERED)] == tokens(out)
    assert isinstance(out[-1][0], Notification) and out[-1][0].raw == store.raws[5]
    t2 = s.transport  # the step connected again at once (a fake connect) and wrote them there
    assert isinstance(t2, FakeTransport) and t2 is not t
    assert [n.token for n in sent[6:]] == wire_tokens(t2.take_wire())
    assert 4 == s.unanswered_count() and 2 == store.reads


def named_while_redis_is_down() -> tuple[BatchList, BinarySession, FakeTransport]:
    """Ten frames written and held by position; Redis goes down, then the gateway names the sixth and hangs up."""
    store = store_of(10)
    s, t = connected(store)
    write_all(s, t, store.notes, 0.0)
    store.up = False
    t.feed(binary.encode_error_response(8, 6))
    t.hang_up()
    return store, s, t


def test_while_the_jobs_cannot_be_read_the_named_one_waits_and_comes_out_once_they_can():
    """Redis is down when the gateway names a held frame: its outcome waits in limbo (the session stays busy, the
    batch unfinished) and is recorded on the first step after the retry delay once Redis is back; the frames after it
    are sent again then too."""
    store, s, t = named_while_redis_is_down()

    out = s.step(0.01, True)

    assert [(n.token, Kind.DELIVERED) for n in store.notes[:5]] == tokens(out)
    OutcomeRecorder({}, results=False).record_all(out, 0.01)
    assert s.busy and 5 == sum(len(e) for e, _ in s.limbo) == store.batch.slimmed and not s.pending
    assert s.step(0.02, False) == [] and s.limbo  # tried again at once, in vain: now it waits
    retry_at = s.deadline(0.02)
    assert 0.02 < retry_at <= 0.02 + outage_delay(99)  # backed off, as every Redis retry is (at most 5 s)
    assert [] == s.step(retry_at - 0.001, False) and s.limbo
    store.up = True

    later = s.step(retry_at, False)

    assert [(store.notes[5].token, Kind.UNREGISTERED)] == tokens(later)
    t2 = s.transport  # connected again for them (a fake connect completes at once) and wrote them
    assert isinstance(t2, FakeTransport) and t2 is not t
    assert [n.token for n in store.notes[6:]] == wire_tokens(t2.take_wire())
    assert not s.limbo and 0 == store.batch.slimmed


def test_while_reads_fail_a_lost_connection_queues_its_held_jobs_for_the_retry_without_asking_redis_again():
    """A read back has just failed (Redis down, each attempt may hang for the socket timeout) and its retry is not due:
    the connection lost after the error response puts its held jobs straight into limbo, read with the others at the
    retry; at a stop, limbo is still read once more."""
    store, s, _ = named_while_redis_is_down()

    s.step(0.01, True)

    assert 1 == store.attempts and 5 == sum(len(e) for e, _ in s.limbo)
    store.up = True
    back, answered = s.unresolved(0.02)
    assert 2 == store.attempts
    assert [store.notes[5].token] == [n.token for n, _ in answered]
    assert [n.token for n in store.notes[6:]] == [n.token for n in back]


def test_an_abrupt_loss_reads_every_held_job_back_with_the_loss_counted():
    """A connection dropped without a word: every held notification is read back into the pending queue in sending
    order, each with one loss more than it had (kept across being held by position)."""
    store = store_of(250)  # within the slow-start window (256) that follows an abrupt loss
    s, t = connected(store)
    write_all(s, t, store.notes[:150], 0.0)
    t.hang_up()
    s.step(0.01, True)
    assert [1] * 150 == [n.losses for n in s.pending]
    again = list(s.pending)
    s.pending.clear()

    t2 = reconnect(s, 1.0)
    write_all(s, t2, again + store.notes[150:], 1.0)
    t2.hang_up()
    s.step(1.01, True)

    assert [n.token for n in store.notes] == [n.token for n in s.pending]
    assert [2] * 150 + [1] * 100 == [n.losses for n in s.pending]


def test_a_loss_while_the_jobs_cannot_be_read_counts_and_gives_up_at_the_limit():
    """Abrupt losses while Redis is down count for the jobs waiting in limbo too: one held by position that has ridden
    MAX_LOSSES losses comes out of limbo as a retry (connection_lost_repeatedly) instead of being sent yet again."""
    store = store_of(3)
    s, t = connected(store)
    for n in store.notes:
        n.losses = MAX_LOSSES - 1
    write_all(s, t, store.notes, 0.0)
    store.up = False
    t.hang_up()

    assert [] == s.step(0.01, True) and 3 == sum(len(e) for e, _ in s.limbo)
    store.up = True
    out = s.step(s.deadline(0.01), False)

    assert [(n.token, Kind.RETRY) for n in store.notes] == tokens(out)
    assert {"connection_lost_repeatedly"} == {o.reason for _, o in out}
    assert not s.pending and not s.limbo and 0 == store.batch.slimmed


def test_once_errors_are_frequent_the_latest_frames_stay_whole_for_a_while():
    """After an error response the window holds frames whole for max(SLIM_AGE, 3 × the answer lag): an error names
    one of them, and it and those after it need no read back."""
    store = store_of(20)
    s, t = connected(store)
    write_all(s, t, store.notes[:10], 0.0)
    t.feed(binary.encode_error_response(8, 1))
    t.hang_up()
    s.step(0.001, True)  # the first frame rejected 1 ms after it was written
    t2 = reconnect(s, 0.01)
    write_all(s, t2, list(s.pending) + store.notes[10:], 0.01)
    s.pending.clear()

    assert 19 == len(s._window) and not s._old
    s.on_timer(0.01 + SLIM_AGE / 2)
    assert 19 == len(s._window)
    s.on_timer(0.01 + SLIM_AGE + 0.001)
    assert (0, 19) == (len(s._window), s._old_count)


def test_a_trial_and_a_notification_without_a_position_stay_whole():
    """The credential breaker's trial must be recognised when answered, and a job not in a list of its own cannot be
    read back: both stay whole in the window, between the held ones."""
    store = store_of(3)
    s, t = connected(store)
    loose = PARSER.parse(b'{"token":"%064x","payload":{"aps":{}}}' % 99)[0][0]
    assert loose.index == -1
    s.hold.trial = store.notes[1]
    write_all(s, t, [store.notes[0], store.notes[1], loose, store.notes[2]], 0.0)

    assert [Slim, Notification, Notification, Slim] == [type(e) for e in s._old]
    assert store.notes[1] is s._old[1] and loose is s._old[2]


def test_a_batch_with_held_notifications_is_not_committed_in_part_until_they_are_answered():
    """A partial commit moves what stays in flight out of the list the positions point into: it waits until none of
    the batch is held by position (it stays on the list of touched batches), then commits as usual."""
    store = store_of(4)
    rec = OutcomeRecorder({}, results=False)
    touched: list[Batch] = []
    store.batch.slices = touched
    s, t = connected(store)
    rec.record_all([(store.notes[3], DELIVERED)], 0.0)
    write_all(s, t, store.notes[:2], 0.0)

    assert [] == rec.split(touched) and [store.batch] == touched

    rec.record_all(s.on_timer(0.3), 0.3)
    (part,) = rec.split(touched)

    assert [store.raws[2]] == part.commit.keep and [] == touched
    assert -1 == store.notes[2].index  # no longer in the list: never held by position again


def test_deliveries_held_by_position_still_feed_the_latency_metric():
    """A held notification's enqueued_at is kept beside its position: the latency histogram counts every one."""
    store = store_of(50, stamped=True)
    s, t = connected(store)
    write_all(s, t, store.notes, 0.0)
    count = metrics.LATENCY.labels("default")._sum.get()

    OutcomeRecorder({}, results=False).record_all(s.on_timer(0.3), 2000.5)

    assert 50 * 1000.0 == metrics.LATENCY.labels("default")._sum.get() - count


EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(1, 40)),
        st.tuples(st.just("error"), st.integers(0, 60), st.sampled_from([8, 7, 10, 0, 255])),
        st.tuples(st.just("wait"), st.sampled_from([0.001, 0.05, 0.31])),
        st.tuples(st.just("drop"), st.booleans()),
        st.tuples(st.just("redis"), st.booleans()),
        st.tuples(st.just("slice")),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS, st.booleans())
# a write that fails and the next step's own reconnect: the error response must go to that new connection
@example(
    [("write", 1)] * 3 + [("error", 0, 8)] * 2 + [("wait", 0.31), ("drop", False), ("write", 1), ("error", 0, 8)], True
)
def test_every_notification_ends_in_exactly_one_outcome_whatever_the_gateway_and_redis_do(events, settle):
    """Any order of writes, error responses (for any identifier, any status), silences, dropped connections, Redis
    outages and commit slices: nothing is read back from a list a partial commit rewrote, each notification gets
    exactly one outcome or is returned at the stop (which records what waited in limbo with an answer), and what the
    batch holds by position always matches what the session holds."""
    store = store_of(200)
    s, t = connected(store)
    rec = OutcomeRecorder({"default": AppConfig(protocol="binary")}, results=False)
    touched: list[Batch] = []
    store.batch.slices = touched
    now, fed, outcomes = 0.0, 0, []
    frames: list[tuple[int, str]] = []  # what the current connection carried: (identifier, token)

    def record(out: Resolved) -> None:
        nonlocal t
        outcomes.extend(expand(out))
        rec.record_all(out, now)
        if s.transport is not None and s.transport is not t:  # connected again (a fake connect completes at once)
            assert isinstance(s.transport, FakeTransport)
            t = s.transport
            frames.clear()
        frames.extend(wire_frames(t.take_wire()))

    for ev in events:
        named = ""  # the token of the frame an error response names, while it is still unanswered
        if ev[0] == "write" and fed < 200:
            s.submit(store.notes[fed : fed + ev[1]])
            fed = min(200, fed + ev[1])
        elif ev[0] == "error" and s.transport is not None and frames:
            ident, named = frames[ev[1] % len(frames)]
            if named in {n.token for n, _ in outcomes} or ev[2] != 8 or not store.up or s.limbo:
                named = ""  # answered already, or not a rejection, or it may wait in limbo (for Redis, or its retry)
            t.feed(binary.encode_error_response(ev[2], ident))
            t.hang_up()
        elif ev[0] == "wait":
            now += ev[1]
        elif ev[0] == "drop" and s.transport is not None:
            t.hang_up() if ev[1] else t.fail_writes()
        elif ev[0] == "redis":
            store.up = ev[1]
        elif ev[0] == "slice":  # the loop's commit slice: a partial commit rewrites the batch's in-flight storage
            store.rewritten = store.rewritten or any(p.commit.keep is not None for p in rec.split(touched))
        if s.transport is None:
            t = reconnect(s, now)
            frames.clear()
        seen = len(outcomes)
        record(s.step(now, True))
        if named:  # status 8 (invalid token) names that very notification
            assert (named, Kind.UNREGISTERED) in [(n.token, o.kind) for n, o in outcomes[seen:]]
        record(s.step(now, False))
        assert store.batch.slimmed == sum(len(e) for e in s._old if isinstance(e, Slim)) + sum(
            len(e) for e, _ in s.limbo
        )
    store.up = True
    now += 1.0
    if settle:  # else the stop comes before the session's next step: limbo is read back by unresolved()
        record(s.step(now, False))
    left, answered = s.unresolved(now)
    record(answered)
    assert not s.limbo and 0 == store.batch.slimmed
    ended = [id(n) for n, _ in outcomes]
    assert len(ended) == len(set(ended))  # nothing answered twice
    # each job's position from its token (a partial commit sets the index of what stays in flight to -1)
    by_position = [int(n.token, 16) - 1 for n, _ in outcomes] + [int(n.token, 16) - 1 for n in left]
    assert list(range(fed)) == sorted(by_position)  # every one sent: an outcome, or returned at shutdown


def test_the_mismatch_guard_counts_each_delivery_held_by_position_not_each_slim():
    """The guard's share of BadDeviceToken answers needs every answer counted: 1,000 deliveries confirmed as one
    Slim are 1,000 answers."""
    store = store_of(1000)
    s, t = connected(store)
    write_all(s, t, store.notes, 0.0)

    s.step(0.3, False)

    assert 1000 == s.guard._answers
