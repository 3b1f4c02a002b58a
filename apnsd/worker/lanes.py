"""A queue's lanes and throttle as the feeder uses them: which lane to look at first, and the rates."""

from __future__ import annotations

from dataclasses import dataclass

from apnsd.config import Config

LOWER_BATCH = 50  # most jobs per connection one take moves from a lane other than the first while that is active
URGENT_RECENT = 1.0  # seconds after first-lane work during which the first lane counts as active (FirstLane)


@dataclass(frozen=True)
class LanePlan:
    """One queue's lane keys (highest priority first), its throttle, and the starvation guard."""

    queue: str
    keys: tuple[str, ...]
    queue_rate: float = 0.0
    lane_rates: tuple[float, ...] = ()
    lower_lane_every: int = 10
    lower_batch: int = 0  # most jobs one take moves from a lane other than the first while it is active (0: any)

    @classmethod
    def for_queue(cls, config: Config, queue: str) -> LanePlan:
        """The plan of one configured queue (``Config.lanes`` and ``Config.lane_rates``)."""
        queue_rate, lane_rates = config.lane_rates(queue)
        apps = [config.apps[a] for a in config.queues().get(queue, [])]
        every = next((app.lower_lane_every for app in apps), 10)
        lanes = config.lanes(queue)
        # A big batch holds the loop (parse, commit) while an urgent job waits its turn: while the first lane
        # is active, lower lanes are taken in small ones (their work goes out a window at a time anyway).
        lower = sum(min(app.lane_window, LOWER_BATCH) * app.connections for app in apps) if len(lanes) > 1 else 0
        return cls(queue, tuple(lanes), queue_rate, tuple(lane_rates), every, lower)

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


class FirstLane:
    """Whether a queue's first lane is active: it had work within the last ``recent`` seconds (times passed in).

    Lower lanes give way to it only then. Small batches and a small window on the wire shorten what an
    urgent job waits for, but they cap a campaign (more takes and commits per job, fewer requests in
    flight): a campaign alone drains as a queue without lanes does, one beside urgent traffic gives way.
    """

    def __init__(self, recent: float = URGENT_RECENT) -> None:
        self.recent = recent
        self._at: float | None = None  # when the first lane last had work

    def saw(self, now: float) -> None:
        """The first lane had work at ``now``."""
        self._at = now

    def active(self, now: float) -> bool:
        """True within ``recent`` seconds of the last ``saw``."""
        return self._at is not None and now - self._at < self.recent


class LowerBatch:
    """How many jobs the feeder's next take may move from a lane below the first: ``plan.lower_batch`` while the
    first lane is active (FirstLane), a whole batch otherwise."""

    def __init__(self, plan: LanePlan, count: int, recent: float = URGENT_RECENT) -> None:
        self.quiet = count
        self.urgent = min(count, plan.lower_batch) if plan.lower_batch else count
        self.first = FirstLane(recent)

    def taken(self, lane: int, now: float) -> None:
        """A take at ``now`` returned jobs from ``lane`` (an index into the plan's keys)."""
        if lane == 0:
            self.first.saw(now)

    def size(self, now: float) -> int:
        """Most jobs a take at ``now`` may move from a lane other than the first."""
        return self.urgent if self.first.active(now) else self.quiet


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
