"""The legacy binary protocol over one connection: stream frames, confirm by silence, resend after errors."""

from __future__ import annotations

import struct
from collections import deque

import msgspec

from apnsd.core.jobs import Notification
from apnsd.core.outcomes import BINARY_PROCESSED, DELIVERED, Outcome, binary_outcome
from apnsd.core.slim import Entry, Slim, add, count
from apnsd.errors import ProtocolError
from apnsd.gateway.session import Loss, Resolved, Session, State
from apnsd.wire import binary

ID_MOD = 1 << 32
SLOW_START = 256  # unconfirmed notifications allowed right after an abrupt loss; doubles per confirmation
FULL_WINDOW = 65_536  # past this the cap is lifted
# Frames are encoded only as the socket takes them: at most this many per step, and none while this many
# bytes still wait in the transport. After an error response everything not yet written goes back to
# pending, so encoding far ahead would be wasted (at 1 % invalid tokens, on every connection).
ENCODE_AT_ONCE = 512
ANSWERED_DELAY = 0.25  # reconnect delay after a connection whose first notification was rejected
UNSENT_LIMIT = 512 * 1024
# While error responses are frequent, frames written in the last 2 × (the gateway's usual answer lag) are "at
# risk": one of them may be rejected, and everything after it is then discarded and written again. At most
# AHEAD_FACTOR × the usual run of accepted frames between two errors (and at least AHEAD_MIN) are at risk at once.
AHEAD_FACTOR = 3
AHEAD_MIN = 128
# And they go out in steps of half that run (at least AHEAD_STEP), so that an error response is seen between two
# writes rather than after a long one.
AHEAD_STEP = 32
SMOOTHING = 0.25  # weight of the newest sample in the answer-lag and run averages
# The latest bytes written on a connection are kept (at least this many, whole writes): after an error response
# the frames that followed the rejected one are written again from them, with new identifiers patched in, instead
# of being encoded again.
KEEP_BYTES = 256 * 1024
# Written frames are held by position (core/slim.py) once older than this, while error responses are frequent (at
# least 3 × their usual lag: what they name and what follows it is then nearly always still whole); at once before.
SLIM_AGE = 0.02
_ID = struct.Struct(">I")  # a frame's identifier; also its length, at offset 1 (the 5-byte header's last 4)
ID_FROM_END = binary.TAIL_SIZE - 3  # a frame's identifier starts this many bytes before its end


class _Run:
    """Consecutive window entries whose frames finished writing at the same moment; ``end`` is the stream offset just
    past the last of them."""

    __slots__ = ("at", "count", "end")

    def __init__(self, count: int, at: float, end: int) -> None:
        self.count = count
        self.at = at
        self.end = end


class BinarySession(Session):
    """Binary APNs: silence means success, so a notification is delivered once ``confirm_delay`` passes
    without an error response; an error names the failed one, and everything after it is sent again.

    The silence is counted from when a frame's last byte has left for the socket, not from when it was
    queued: under a slow gateway frames can wait in the transport's buffer for seconds, and confirming
    them there would record as delivered what a lost connection then throws away unsent."""

    protocol = "binary"
    keeps_standby = True  # every error response ends the connection: the resend starts on a warm one
    holds_positions = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # At ~200,000/s the window holds tens of thousands of notifications, so it keeps nothing per frame but
        # the notification itself, and soon only its position (core/slim.py): identifiers are consecutive from
        # ``_first_id`` (window first, then the unwritten frames), and the write times are kept per run of frames
        # written together.
        self._unwritten: deque[tuple[int, Notification]] = deque()  # (end offset, n), still buffered
        # Written, awaiting silence: the older part (_old, mostly Slims: notifications held by position, see
        # core/slim.py) before the newer one (_window, whole notifications).
        self._old: deque[Entry] = deque()
        self._old_count = 0  # notifications in _old
        self._window: deque[Notification] = deque()
        self._runs: deque[_Run] = deque()  # the window's write times, oldest first; counts sum to _written_count()
        self._first_id = 1  # the identifier of the oldest unanswered frame (window[0], else unwritten[0])
        self._queued = 0  # bytes handed to the current transport
        self._next_id = 1
        self._rx = bytearray()
        # After a connection died without an error response, the window of unconfirmed frames starts
        # small and doubles as confirmations arrive: a gateway that keeps dropping the connection then
        # costs a few hundred resends per drop, not the whole window each time.
        self._cap: int | None = None
        self._lag = 0.0  # average seconds from writing a frame to the error response naming it (0: none seen yet)
        self._gap = 0.0  # average run of frames accepted between two error responses (0: none seen yet)
        self._run = 0  # frames accepted since the last error response
        self._moved = 0  # frames written on this connection (their bytes left for the socket)
        self._marks: deque[tuple[float, int]] = deque()  # (time, _moved then): when the written frames left
        # (stream offset, bytes, first identifier, frames) of this connection's latest writes
        self._kept: deque[tuple[int, bytes, int, int]] = deque()
        # Frames of the lost connection to write again as they were (identifiers aside): the notifications, and
        # their frames from _reuse_at on.
        self._reuse: deque[Notification] = deque()
        self._reuse_buf = bytearray()
        self._reuse_at = 0

    def on_connected(self, now: float) -> None:
        """Start identifiers and byte offsets afresh on each connection."""
        self._next_id = 1
        self._queued = 0
        self._rx.clear()
        self._moved = 0
        self._marks = deque([(float("-inf"), 0)])
        self._kept.clear()

    def send_pending(self, now: float) -> None:
        """Encode pending notifications (all, or what the slow-start cap allows) and write them at once."""
        if (
            self.state is not State.OPEN
            or not self.pending
            or self.transport is None
            or self.transport.unsent >= UNSENT_LIMIT
        ):
            return
        pending, unwritten, parts, overhead = self.pending, self._unwritten, binary.frame_parts, binary.FRAME_OVERHEAD
        count = min(len(pending), ENCODE_AT_ONCE)
        if self._cap is not None:
            count = min(count, self._cap - self.unanswered_count())
            if count <= 0:
                return
        room = self._ahead_room(now)
        if room is not None:
            count = min(count, room)
            if count <= 0:
                return
        ident, queued = self._next_id, self._queued
        if not unwritten and not self._window and not self._old:
            self._first_id = ident
        out: list[bytes | memoryview | msgspec.Raw] = []
        start, first, total = queued, ident, count
        if self._reuse:
            ident, queued, count = self._take_reused(count, ident, queued, out)
        add = out.extend
        for _ in range(count):
            n = pending.popleft()
            # The payload as held, joined below without a copy of its own; the window keeps the notification, not
            # its 48-byte view of the payload (read from the raw job again should the frame be encoded afresh).
            token, payload = n.token_bytes, n.take_body()
            add(parts(token, payload, ident, n.expiration or 0, n.priority or 10))
            queued += len(token) + len(payload) + overhead
            unwritten.append((queued, n))
            ident = (ident + 1) % ID_MOD
        self._next_id, self._queued = ident, queued
        data = b"".join(out)
        self.transport.send(data)
        kept = self._kept
        kept.append((start, data, first, total))
        while len(kept) > 1 and queued - kept[1][0] >= KEEP_BYTES:
            kept.popleft()
        self.log.debug("batch_written", notifications=total, bytes=len(data))

    def _take_reused(
        self, count: int, ident: int, queued: int, out: list[bytes | memoryview | msgspec.Raw]
    ) -> tuple[int, int, int]:
        """Write up to ``count`` pending notifications from the frames kept of the lost connection, as long as they
        come in the same order; returns the next identifier, the stream offset and how many are left to encode."""
        reuse, pending, unwritten = self._reuse, self.pending, self._unwritten
        buf, pos = self._reuse_buf, self._reuse_at
        begin, patch, length = pos, _ID.pack_into, _ID.unpack_from
        end = len(buf)
        while count and reuse and pending and pending[0] is reuse[0] and pos < end:
            n = pending.popleft()
            reuse.popleft()
            size = length(buf, pos + 1)[0] + 5
            pos += size
            queued += size
            patch(buf, pos - ID_FROM_END, ident)
            unwritten.append((queued, n))
            ident = (ident + 1) % ID_MOD
            count -= 1
        if pos > begin:
            out.append(memoryview(buf)[begin:pos])
        self._reuse_at = pos
        if reuse and (not pending or pending[0] is not reuse[0]):
            self._drop_reuse()  # something else goes first now (a trial, a notification given up): encode again
        return ident, queued, count

    def _drop_reuse(self) -> None:
        self._reuse.clear()
        self._reuse_buf = bytearray()
        self._reuse_at = 0

    def _keep_for_resend(self, notes: list[Notification]) -> None:
        """The lost connection's unanswered frames (the last ones written on it, from identifier _first_id on) are
        kept to be written again, if the writes kept reach back to the first of them."""
        self._drop_reuse()
        kept, first = self._kept, self._first_id
        if not notes or not kept or kept[-1][0] + len(kept[-1][1]) != self._queued:
            kept.clear()
            return
        for i in range(len(kept) - 1, -1, -1):
            _, data, ident, count = kept[i]
            skip = (first - ident) % ID_MOD
            if skip < count:
                break
        else:
            kept.clear()
            return  # not kept so far back: they are encoded again
        pos, length = 0, _ID.unpack_from
        for _ in range(skip):
            pos += length(data, pos + 1)[0] + 5
        if length(data, pos + length(data, pos + 1)[0] + 5 - ID_FROM_END)[0] != first:
            kept.clear()  # never expected: the kept bytes do not start with the first frame to resend
            return
        buf = bytearray(memoryview(data)[pos:])
        for _, data, _, _ in list(kept)[i + 1 :]:
            buf += data
        kept.clear()
        self._reuse.extend(notes)
        self._reuse_buf = buf

    def _written(self, now: float) -> None:
        """Start the silence clock of frames whose bytes the transport has written since."""
        unwritten, window = self._unwritten, self._window
        written = self.transport.written if self.transport is not None else 0
        moved = end = 0
        while unwritten and unwritten[0][0] <= written:
            end, n = unwritten.popleft()
            window.append(n)
            moved += 1
        if moved:
            self._stamp(moved, now, end)
            self._slim(now)

    def _slim(self, now: float) -> None:
        """Hold the window's older notifications by position (see SLIM_AGE); a trial, and one that cannot be read
        back, stays whole."""
        window = self._window
        if self.hydrate is None or not window:
            return
        if self._gap:
            cutoff, due = now - max(SLIM_AGE, 3 * self._lag), -self._old_count
            for run in self._runs:
                if run.at > cutoff:
                    break
                due += run.count
        else:
            due = len(window)
        old, trial, k = self._old, self.hold.trial, 0
        while k < due and window:
            n = window.popleft()
            if n.index < 0 or n is trial:
                old.append(n)
            else:
                add(old, n)
            k += 1
        self._old_count += k

    def _stamp(self, count: int, now: float, end: int) -> None:
        """The last ``count`` window entries, ending at stream offset ``end``, were written at ``now``."""
        runs = self._runs
        if runs and runs[-1].at == now:
            runs[-1].count += count
            runs[-1].end = end
        else:
            runs.append(_Run(count, now, end))
        self._moved += count
        if self._gap:  # only while error responses are frequent is the age of written frames looked at
            self._marks.append((now, self._moved))

    def _written_count(self) -> int:
        """Notifications written and awaiting silence."""
        return self._old_count + len(self._window)

    def _take(self, count: int) -> list[Entry]:
        """Remove the ``count`` oldest written notifications (a Slim is split where the count ends inside it)."""
        self._first_id = (self._first_id + count) % ID_MOD
        runs, left = self._runs, count
        while left:
            run = runs[0]
            if run.count > left:
                run.count -= left
                break
            left -= run.count
            runs.popleft()
        out: list[Entry] = []
        old = self._old
        while count and old:
            e = old[0]
            size = len(e) if type(e) is Slim else 1
            if size > count:
                out.append(e.split(count))  # type: ignore[union-attr]  # size > 1: a Slim
                self._old_count -= count
                return out
            old.popleft()
            out.append(e)
            self._old_count -= size
            count -= size
        window = self._window
        out += [window.popleft() for _ in range(count)]
        return out

    def _deliver(self, count: int) -> Resolved:
        """The ``count`` oldest window entries were delivered (an error response named a later one)."""
        return [(e, DELIVERED) for e in self._take(count)]

    def _ahead_room(self, now: float) -> int | None:
        """How many more frames may be put at risk now (None: no limit, error responses are not frequent)."""
        if not self._gap:
            return None
        run = max(self._gap, self._run)
        limit = max(AHEAD_MIN, int(AHEAD_FACTOR * run))
        cutoff, marks = now - 2 * self._lag, self._marks
        while len(marks) > 1 and marks[1][0] <= cutoff:
            marks.popleft()
        return min(limit - (self._moved - marks[0][1]) - len(self._unwritten), max(AHEAD_STEP, int(run / 2)))

    def on_bytes(self, data: bytes, now: float) -> Resolved:
        """Parse error responses; resolve the named notification and those before it."""
        self._written(now)  # an error can only name a frame the gateway received whole
        self._rx += data
        out: Resolved = []
        while len(self._rx) >= binary.ERROR_RESPONSE_SIZE:
            try:
                err = binary.parse_error_response(bytes(self._rx[: binary.ERROR_RESPONSE_SIZE]))
            except ProtocolError as exc:  # not the binary protocol: nothing it names can be trusted
                self._rx.clear()
                return out + self._lost(f"unreadable answer from the gateway: {exc}", now, Loss.ABRUPT)
            del self._rx[: binary.ERROR_RESPONSE_SIZE]
            out += self._on_error(err, now)
        return out

    def _reached(self, identifier: int, now: float) -> None:
        """The gateway names a frame only once it has it whole: that frame and those before it were written,
        even if the transport's count of written bytes (per chunk) has not caught up yet."""
        unwritten = self._unwritten
        if unwritten:
            k = (identifier - self._first_id - self._written_count()) % ID_MOD
            reached = k + 1 if k < len(unwritten) else 0
            end = 0
            for _ in range(reached):
                end, n = unwritten.popleft()
                self._window.append(n)
            if reached:
                self._stamp(reached, now, end)
                self._slim(now)

    def _on_error(self, err: binary.ErrorResponse, now: float) -> Resolved:
        self._reached(err.identifier, now)
        written = self._written_count()
        out: Resolved = []
        if not written:
            self.log.warning("error_response_late", status=err.status, identifier=err.identifier)
            return out
        idx = (err.identifier - self._first_id) % ID_MOD
        if idx >= written:
            # The named notification was confirmed already (or never ours): everything still in the
            # window came after it, so the gateway discarded all of it and it must all be resent.
            self.log.warning("error_response_late", status=err.status, identifier=err.identifier, unconfirmed=written)
            self.explanation = f"error response {err.status}"
            return out
        if idx == 0 and err.status not in BINARY_PROCESSED and not self._productive:
            self.pacer.answered(now, ANSWERED_DELAY)  # nothing delivered, but the gateway did answer
        if idx:
            out = self._deliver(idx)
        outcome = binary_outcome(err.status)
        self._run += idx
        if err.status in BINARY_PROCESSED:
            # No errors (0) and Shutdown (10) name the last notification processed, which therefore succeeded.
            out += self._deliver(1)
            self._run += 1
        else:
            written_at = self._runs[0].at
            (e,) = self._take(1)
            self._learn(now - written_at)
            self.log.info(
                "error_response",
                status=err.status,
                reason=outcome.reason,
                notification=self.describe(e),
                outcome=outcome.kind.value,
                resend=self._written_count(),
            )
            out += self._answered(e, outcome)
        self.explanation = f"error response {err.status} ({outcome.reason})"
        return out

    def _answered(self, e: Entry, outcome: Outcome) -> Resolved:
        """The outcome of one notification the gateway named (read back first if held by position)."""
        if not isinstance(e, Slim):
            return [(e, outcome)]
        notes, _ = self.restore([e], outcome)
        return [(n, outcome) for n in notes]

    def _learn(self, lag: float) -> None:
        """An error response came ``lag`` seconds after its frame was written, after a run of accepted frames."""
        lag = min(lag, self.cfg.confirm_delay)
        if self._gap:
            self._lag += SMOOTHING * (lag - self._lag)
            self._gap += SMOOTHING * (self._run - self._gap)
        else:
            self._lag, self._gap = lag, float(max(self._run, 1))
        self._run = 0

    def on_timer(self, now: float) -> Resolved:
        """Confirm notifications that stayed unanswered for ``confirm_delay`` after they were written."""
        self._written(now)
        self._slim(now)
        runs, cutoff = self._runs, now - self.cfg.confirm_delay
        out: Resolved = []
        if runs and runs[0].at <= cutoff and self.transport is not None:
            # Silence counts only if we listened: when the loop was held up (a busy machine), an error
            # response can sit unread in the socket although the clock says confirm_delay has passed.
            out += self._read(now)
            self._hold_unacked(now)
        due = 0
        for run in runs:
            if run.at > cutoff:
                break
            due += run.count
        if due:
            out += self._deliver(due)
        self._run += due
        if due and self._cap is not None:
            self._cap *= 2
            if self._cap >= FULL_WINDOW:
                self._cap = None
        return out

    def _hold_unacked(self, now: float) -> None:
        """Silence counts only for frames the gateway could have read: frames still in our kernel's send queue (its
        TCP has not acknowledged them: a gateway reading slower than we write, a congested link) start their
        confirm_delay again now. Confirming them would record as delivered what a reset then throws away unsent."""
        t, runs = self.transport, self._runs
        if t is None or not runs:
            return
        unacked = t.unacked()
        acked = t.written - unacked  # ciphertext is longer than its plaintext: this errs towards holding
        if runs[-1].end <= acked:
            return
        for run in reversed(runs):  # offsets grow along the window: the held runs are the last ones
            if run.end <= acked:
                break
            run.at = max(run.at, now)
        self.log.debug("confirm_held", unacked=unacked, window=self._written_count())

    def answers(self, out: Resolved) -> int:
        """How many notifications ``out`` holds, each of a Slim's counted."""
        return count(n for n, _ in out)

    def after_loss(self, loss: Loss) -> None:
        """An abrupt loss (no error response) restarts the window small."""
        if loss is Loss.ABRUPT:
            self._cap = SLOW_START

    def timer_deadline(self, now: float) -> float:
        """When the oldest unconfirmed notification will be confirmed (now, if frames were written since, or
        if pending ones can be encoded: the transport has room and the window allows)."""
        t = self.transport
        if self._unwritten and t is not None and self._unwritten[0][0] <= t.written:
            return now
        confirm = self._runs[0].at + self.cfg.confirm_delay if self._runs else now + 3600.0
        if (
            self.pending
            and t is not None
            and self.state is State.OPEN
            and t.unsent < UNSENT_LIMIT
            and (self._cap is None or self.unanswered_count() < self._cap)
        ):
            room = self._ahead_room(now)
            if room is None or room > 0:
                return now
            if len(self._marks) > 1:  # room comes back as the oldest frames at risk age past the answer lag
                return min(confirm, self._marks[1][0] + 2 * self._lag)
        return confirm

    def unanswered_count(self) -> int:
        """Sent (written or still buffered) but not yet confirmed."""
        return self._old_count + len(self._window) + len(self._unwritten)

    def ahead(self) -> int:
        """Only the frames not written yet: the gateway reads written ones in order within moments, and they await
        nothing but the silence that confirms them (counting them capped a binary campaign on a queue with lanes at
        lane_window per confirm_delay, ~3,300/s)."""
        return len(self._unwritten)

    def take_unanswered(self) -> list[Notification]:
        """Empty the window and the unwritten frames, oldest first (those held by position read back)."""
        notes, whole = self.restore([*self._old, *self._window, *(n for _, n in self._unwritten)])
        if whole:
            self._keep_for_resend(notes)
        else:  # some are missing: the kept frames no longer line up with the notifications
            self._kept.clear()
            self._drop_reuse()
        self._old.clear()
        self._old_count = 0
        self._window.clear()
        self._runs.clear()
        self._unwritten.clear()
        return notes
