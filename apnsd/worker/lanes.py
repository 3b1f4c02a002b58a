"""A queue's lanes and throttle as the feeder uses them: which lane to look at first, and the rates."""

from __future__ import annotations

from dataclasses import dataclass

from apnsd.config import Config

LOWER_BATCH = 100  # most jobs per connection one take moves from a lane other than the first, while it is quiet
LOWER_BATCH_URGENT = 50  # the same while the first lane is active (see LowerBatch)
URGENT_RECENT = 1.0  # seconds after a take from the first lane during which it counts as active


@dataclass(frozen=True)
class LanePlan:
    """One queue's lane keys (highest priority first), its throttle, and the starvation guard."""

    queue: str
    keys: tuple[str, ...]
    queue_rate: float = 0.0
    lane_rates: tuple[float, ...] = ()
    lower_lane_every: int = 10
    lower_batch: int = 0  # most jobs one take moves from a lane other than the first (0: batch_size)
    lower_batch_urgent: int = 0  # the same while the first lane is active (0: lower_batch)

    @classmethod
    def for_queue(cls, config: Config, queue: str) -> LanePlan:
        """The plan of one configured queue (``Config.lanes`` and ``Config.lane_rates``)."""
        queue_rate, lane_rates = config.lane_rates(queue)
        apps = [config.apps[a] for a in config.queues().get(queue, [])]
        every = next((app.lower_lane_every for app in apps), 10)
        lanes = config.lanes(queue)

        # A big batch holds the loop (parse, commit) while an urgent job waits its turn: lower lanes are
        # taken in small ones (their work goes out a window at a time anyway), smaller still while urgent
        # work is about (LowerBatch).
        def per_take(most: int) -> int:
            return sum(min(app.lane_window, most) * app.connections for app in apps) if len(lanes) > 1 else 0

        lower, urgent = per_take(LOWER_BATCH), per_take(LOWER_BATCH_URGENT)
        return cls(queue, tuple(lanes), queue_rate, tuple(lane_rates), every, lower, urgent)

    @property
    def simple(self) -> bool:
        """One lane and no throttle: taken exactly as a queue without lanes always was (TAKE_SCRIPT)."""
        return len(self.keys) == 1 and not self.queue_rate and not any(self.lane_rates)

    @property
    def rates(self) -> tuple[float, list[float]]:
        """(queue rate, per-lane rates) as the take script wants them; 0 means unlimited."""
        return self.queue_rate, list(self.lane_rates or [0.0] * len(self.keys))

    def first_lane(self, n: int) -> int:
        """The lane the ``n``-th take (counting from 1) looks at first; it then looks lower, then higher.

        Every ``lower_lane_every``-th take starts one lane lower, every ``lower_lane_every``²-th two lanes
        lower, and so on: with 10 and three busy lanes, 90 % of batches come from the first lane, 9 % from
        the second and 1 % from the third, so no lane waits forever behind a busy higher one.
        """
        every, lane = self.lower_lane_every, 0
        while lane < len(self.keys) - 1 and n % every ** (lane + 1) == 0:
            lane += 1
        return lane


class LowerBatch:
    """How many jobs the feeder's next take may move from a lane below the first: fewer while the first is active.

    A lower-lane batch is a piece of work (parse, write, commit) that an urgent job handed over meanwhile
    waits for; smaller ones shorten that wait but cost the campaign throughput (more takes and commits per
    job). So they are small only within ``recent`` seconds of a take from the first lane: a campaign with no
    urgent traffic drains at full speed, one beside urgent traffic gives up a few per cent.
    """

    def __init__(self, plan: LanePlan, count: int, recent: float = URGENT_RECENT) -> None:
        self.quiet = min(count, plan.lower_batch) if plan.lower_batch else count
        self.urgent = min(self.quiet, plan.lower_batch_urgent) if plan.lower_batch_urgent else self.quiet
        self.recent = recent
        self._first_at: float | None = None  # when the first lane was last taken from

    def taken(self, lane: int, now: float) -> None:
        """A take at ``now`` returned jobs from ``lane`` (an index into the plan's keys)."""
        if lane == 0:
            self._first_at = now

    def size(self, now: float) -> int:
        """Most jobs a take at ``now`` may move from a lane other than the first."""
        active = self._first_at is not None and now - self._first_at < self.recent
        return self.urgent if active else self.quiet


WINDOW_MIN = 10  # lower lanes' work per connection the adaptive window never goes below
BUSY_HIGH, BUSY_LOW = 0.9, 0.7  # share of the time the delivery loop was not waiting in select


def next_window(window: float, busy: float, waiting: bool, most: int) -> float:
    """The lower lanes' window after a period in which the delivery loop was ``busy`` (0..1) of the time.

    A saturated loop works through everything ahead of an urgent answer before it reads it, so there the
    window is what an urgent job waits for: it shrinks. A loop that mostly waits (a far gateway) loses
    nothing by a bigger window and needs one for throughput: it grows, while lower-lane work waits.
    Always between WINDOW_MIN and ``most`` (the apps' ``lane_window``).
    """
    if busy > BUSY_HIGH:
        return max(float(WINDOW_MIN), window * 0.7)
    if busy < BUSY_LOW and waiting:
        return min(float(most), window * 1.25 + 1)
    return window
