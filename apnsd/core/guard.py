"""Environment-mismatch guard: notices when most of an app's recent answers are BadDeviceToken."""

from __future__ import annotations

from collections import deque

OTHER_ENVIRONMENT = {"production": "sandbox", "sandbox": "production"}


class MismatchGuard:
    """Counts answers and BadDeviceToken answers in a sliding time window; trips once, stays tripped.

    Counts are kept per whole second, so memory is bounded by the window, not by the answer rate.
    """

    def __init__(self, min_answers: int, window: float) -> None:
        self.min_answers = min_answers  # 0 turns the guard off
        self.window = window
        self._buckets: deque[list[int]] = deque()  # [second, answers, bad]
        self._answers = 0
        self._bad = 0
        self.tripped: tuple[int, int] | None = None  # (bad, answers) when it tripped

    def observe(self, answers: int, bad: int, now: float) -> bool:
        """Add ``answers`` gateway answers, ``bad`` of them BadDeviceToken; True when this call trips the guard."""
        if not self.min_answers or self.tripped is not None or not answers:
            return False
        second = int(now)
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += answers
            buckets[-1][2] += bad
        else:
            buckets.append([second, answers, bad])
        self._answers += answers
        self._bad += bad
        horizon = now - self.window
        while buckets and buckets[0][0] + 1 <= horizon:
            _, old_answers, old_bad = buckets.popleft()
            self._answers -= old_answers
            self._bad -= old_bad
        if self._answers >= self.min_answers and 2 * self._bad > self._answers:
            self.tripped = (self._bad, self._answers)
            return True
        return False


def mismatch_message(environment: str, bad: int, answers: int) -> str:
    """The operator's explanation of a tripped guard: the likely cause and the fix."""
    other = OTHER_ENVIRONMENT.get(environment, "other")
    return (
        f"{bad} of the last {answers} answers were BadDeviceToken: the device tokens are most likely {other} "
        f"tokens sent to the {environment} gateway (Xcode debug builds register sandbox tokens; TestFlight and "
        f"App Store builds register production tokens). Fix `environment` (or where the tokens come from), "
        f"then reload with SIGHUP; until then this app's jobs wait in the scheduled set"
    )
