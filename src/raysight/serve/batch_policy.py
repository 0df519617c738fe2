"""The batcher's policy: the row cap, admission against a latency target, and when waiting
for company pays. Pure: the batcher (serve/batching.py) supplies every time and size.

**The cost of a pass.** Each pass feeds an exponentially weighted least-squares fit of its
compute time t(n) = a + b·n over its n rows (while every pass has had the same size, all of
it counts per row, which over-rates b and errs towards smaller passes).

**A latency target** (`latency_target_s` > 0) sizes passes from that cost: a request that
arrives just after a pass starts waits for it and then runs in the next, so two passes of
the row cap must fit the target: cap = (target/2 - a)/b, at least 1 row and at most
`max_batch_size`. It also admits: an item whose predicted finish (the running passes'
remaining time, then the queued rows ahead of it and its own, in passes of the cap) is
past the target is refused at once with OverloadedError, so under overload the requests
taken still finish in time and the rest can go elsewhere, instead of every request waiting
in a queue that only grows. A request that finds the model idle is always taken. With the
target 0 the cap stays at `max_batch_size` and nothing is refused here: the most
throughput.

**Slack.** The prediction leaves things out: the event loop's lag between one pass and the
next, passes slower than their fit while the loop is busy refusing. Each answered item
reports its actual time against its prediction, and the policy tracks the 99th percentile
of the difference (a stochastic quantile step, at least 0). Admission budgets for it, so
that the target holds for 99% of the answers and not only for the average one; the cap
does not, as smaller passes would only lower the capacity the queue drains at. Measured
under 2x overload (docs/benchmarks.md), a ratio instead of a difference refused requests
at half the capacity, and a cap shrunk by the slack halved the goodput.

**Waiting pays only for a fixed cost.** When a model is free and the queued rows q would
make a pass mostly fixed cost (a > b·q, as on a GPU with launch overhead), and recent
arrivals found other requests in flight (someone is likely to join), the oldest item may
wait for more, up to `max_wait_s` and never longer than a: without the wait the latecomers
run together in the next pass anyway, so waiting saves at most one fixed cost. It stops
waiting once the rows reach the cap or a/b (where the fixed cost is half the pass). A lone
request never waits; on a CPU a is small (about 0.2 ms for the MNIST convnet, mostly the
hop to the forward-pass thread, which a pass's measured time includes), so waits are short.

**A preferred size, under load.** `preferred_batch_size` (Triton's dynamic-batcher knob)
is the pass the batcher gathers towards while requests keep arriving: with others likely
to join, the oldest item waits (up to `max_wait_s`) while the arrival rate says at least one
more row comes before the wait ends, until the rows reach the preferred size. A pass's
fixed cost is more than its time in the model: on the event loop each pass is a hop to the
worker thread and back, its answers and its metric records, and in a process of 2 busy
cores that CPU comes out of reading and answering the requests themselves. Measured in
`raysight serve` (docs/benchmarks.md, "gathering a preferred size"): at 32 unary callers
passes had averaged 2.6 images, and gathering towards 6 answered about 30% more requests
with a lower p99. When the rate says not even one more row comes before the wait ends,
nothing waits; a load between that and saturation waits for what it can gather, which
under an open loop at about 40% of capacity raised the p50 by 3-6 ms in three runs of four.

**A lone short pass runs on the event loop.** Handing a pass to the worker thread and its
answer back costs two thread wake-ups and the interpreter lock changing hands. So while
requests arrive alone (the mean company at arrival under 0.5), with nothing else queued or
running, the model idle for at least 0.2 ms and the pass predicted at most 2 ms, the pass
runs on the loop itself, which reads and answers nothing else meanwhile. Measured in
`raysight serve` on the MNIST convnet (docs/benchmarks.md, "a lone short pass on the event
loop"): one caller got 11% more requests a second on a replica's own port and 12% more
through HAProxy, and from 8 callers or one stream up no pass ran on the loop. The idle gap
keeps it so: without it, at 8 callers each pass on the loop answered its request before the
next was read, arrivals found no company, the rule held and nothing batched (10% fewer
requests a second in three runs of four). Under load the next pass starts as the last ends;
a lone caller's next request is a round trip away (0.3 ms or more on loopback).
The bound is 2 ms, where the hop (0.15-0.3 ms) is still about a tenth of the request and
the loop is not held long from other calls. At 0.5 ms the rule sat on its edge on a slower
machine: a pass on the worker thread is timed with its hop, so once the estimate crossed
the bound passes stayed off the loop, and one caller got a quarter fewer requests a second
(docs/benchmarks.md, "a lone pass up to 2 ms").

**Nor once everyone expected is here.** The i-th arrival of a burst of N finds i-1 others,
(N-1)/2 on average, so with more than twice the average company queued or in passes no one
else is likely to come: a 4-deep stream's burst is all queued at once and starts, while 32
unary callers, who keep arriving, still wait. Measured in `raysight serve` (MNIST convnet,
two alternation sets, docs/benchmarks.md): the stream at c=1 15% more requests/s, unary
requests at c=32 level.
"""

from __future__ import annotations

from dataclasses import dataclass

_DECAY = 0.95  # weight of the past per observation: about the last 20 passes count
_QUANTILE = 0.99  # the share of answers the latency target is for
_STEP = 0.02  # the slack tracker's step, as a share of the target
_MIN_SPREAD = 0.25  # variance of n (rows²) below which a and b cannot be told apart
_COMPANY = 1.0  # mean others in flight at arrival above which someone is likely to join
_ALONE = 0.5  # mean others in flight at arrival under which requests come alone
INLINE_MAX_S = 0.002
"""The longest predicted pass that may run on the event loop itself (`runs_inline`)."""
_IDLE_S = 0.0002  # the model idle at least this long before a pass on the loop (module doc)


@dataclass(frozen=True)
class BatchLimits:
    """The knobs of a batcher, from the serving settings.

    Attributes:
        max_batch_size: The most rows (images) one pass holds, and one item may carry.
        max_wait_s: The most the oldest item waits for others, when waiting pays.
        preferred_batch_size: Rows a pass gathers towards while requests keep arriving
            (at most `max_wait_s`); 0: off, only the fixed-cost rule waits.
        latency_target_s: Seconds from arrival to answer a request should stay under: it
            sizes passes and refuses what would finish later; 0: off.
        max_concurrent: Forward passes that may run at once.
    """

    max_batch_size: int = 32
    max_wait_s: float = 0.005
    preferred_batch_size: int = 0
    latency_target_s: float = 0.0
    max_concurrent: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_concurrent < 1:
            raise ValueError(
                f"max_batch_size and max_concurrent must be at least 1, got "
                f"{self.max_batch_size}, {self.max_concurrent}"
            )
        if self.preferred_batch_size < 0:
            raise ValueError(f"preferred_batch_size must be >= 0, got {self.preferred_batch_size}")
        if self.max_wait_s < 0 or self.latency_target_s < 0:
            raise ValueError(
                f"max_wait_s and latency_target_s must be >= 0, got {self.max_wait_s}, "
                f"{self.latency_target_s}"
            )


class CostModel:
    """Compute time of a pass, t(n) = a + b·n, by exponentially weighted least squares."""

    def __init__(self, decay: float = _DECAY) -> None:
        self._decay = decay
        # Weighted sums of 1, n, t, n², n·t over the passes seen.
        self._w = self._n = self._t = self._nn = self._nt = 0.0

    def observe(self, rows: int, seconds: float) -> None:
        d = self._decay
        self._w = d * self._w + 1.0
        self._n = d * self._n + rows
        self._t = d * self._t + seconds
        self._nn = d * self._nn + rows * rows
        self._nt = d * self._nt + rows * seconds

    def fit(self) -> tuple[float, float] | None:
        """(a, b) in seconds and seconds per row, both >= 0; None until passes of different
        sizes have been seen (at one size the fixed and per-row costs are not separable)."""
        if self._w == 0.0:
            return None
        mean_n = self._n / self._w
        spread = self._nn / self._w - mean_n * mean_n  # weighted variance of n
        if spread < _MIN_SPREAD:
            return None
        b = max(0.0, (self._nt / self._w - mean_n * self._t / self._w) / spread)
        a = max(0.0, self._t / self._w - b * mean_n)
        return a, b

    def estimate(self) -> tuple[float, float] | None:
        """(a, b) from `fit`, or while the passes were all of one size, (0, seconds per
        row): no fixed cost, all of it per row, which over-rates b and so errs towards
        smaller passes. None before any pass."""
        fit = self.fit()
        if fit is not None:
            return fit
        if self._n == 0.0:
            return None
        return 0.0, self._t / self._n


class BatchPolicy:
    """How many rows the next pass may take, whether to take an item, and whether to wait
    for more (the module's policy)."""

    def __init__(self, limits: BatchLimits) -> None:
        self.limits = limits
        self.cap = limits.max_batch_size
        self.cost = CostModel()
        self._company = 0.0  # weighted mean of the others in flight when an item arrives
        self._last_arrival: float | None = None
        self._gap_s = 0.0  # weighted mean seconds between arrivals
        self._rows = 0.0  # weighted mean rows an arrival carries
        self.slack_s = 0.0  # 99th percentile of (actual - predicted) answer time, >= 0

    def configure(self, limits: BatchLimits) -> None:
        """New limits; the cost model and the slack are kept, so the cap follows at once."""
        self.limits = limits
        self.cap = self._cap()

    def on_arrival(self, others: int, rows: int, now: float) -> None:
        """An item of `rows` arrived at `now` and found `others` items queued or in running
        passes."""
        self._company = _DECAY * self._company + (1 - _DECAY) * others
        self._rows = _mean(self._rows, rows)
        if self._last_arrival is not None:
            self._gap_s = _mean(self._gap_s, now - self._last_arrival)
        self._last_arrival = now

    def runs_inline(self, rows: int, idle_s: float) -> bool:
        """Whether a pass of `rows` that found nothing else queued or running may run on the
        event loop, without the hop to the worker thread and back (module doc).

        Only while requests arrive alone (the mean company at arrival under 0.5), the model
        has been idle for `idle_s` >= 0.2 ms (under load the next pass starts as the last
        ends) and the pass is predicted to take at most INLINE_MAX_S: the loop reads and
        answers nothing else meanwhile, so where others would wait behind it, passes stay off.
        """
        estimate = self.cost.estimate()
        if estimate is None or self._company >= _ALONE or idle_s < _IDLE_S:
            return False
        a, b = estimate
        return a + b * rows <= INLINE_MAX_S

    def row_gap_s(self) -> float | None:
        """Mean seconds between arriving rows; None before two arrivals."""
        if self._gap_s <= 0.0 or self._rows <= 0.0:
            return None
        return self._gap_s / self._rows

    def wait_s(self, queued_rows: int, waited_s: float, in_flight: int) -> float:
        """How much longer the oldest item should wait for others; 0: start the pass now.

        Args:
            queued_rows: Rows the pass would take if it started now.
            waited_s: How long the oldest item has waited already.
            in_flight: Items queued or in running passes now.
        """
        if queued_rows >= self.cap or self._company < _COMPANY:
            return 0.0
        if in_flight > 2 * self._company:  # everyone arrivals have been finding is here
            return 0.0
        return max(self._gather_s(queued_rows, waited_s), self._fixed_cost_s(queued_rows, waited_s))

    def _gather_s(self, queued_rows: int, waited_s: float) -> float:
        """The wait towards the preferred size: while the arrival rate says another row
        comes before `max_wait_s` is spent, until the preferred rows are predicted in."""
        preferred = min(self.limits.preferred_batch_size, self.cap)
        left = self.limits.max_wait_s - waited_s
        per_row = self.row_gap_s()
        if queued_rows >= preferred or per_row is None or per_row >= left:
            return 0.0
        return min(left, (preferred - queued_rows) * per_row)

    def _fixed_cost_s(self, queued_rows: int, waited_s: float) -> float:
        """The wait the model's measured fixed cost pays for (module doc), at most a."""
        fit = self.cost.fit()
        if fit is None:
            return 0.0
        a, b = fit
        if a <= b * queued_rows:  # at most half the pass is fixed cost: waiting cannot pay
            return 0.0
        return max(0.0, min(self.limits.max_wait_s, a) - waited_s)

    def on_pass(self, rows: int, compute_s: float) -> None:
        """A pass of `rows` took `compute_s` in the model: learn its cost, size the next."""
        self.cost.observe(rows, compute_s)
        self.cap = self._cap()

    def _cap(self) -> int:
        target, most = self.limits.latency_target_s, self.limits.max_batch_size
        estimate = self.cost.estimate()
        if target <= 0 or estimate is None or estimate[1] <= 0:
            return most
        a, b = estimate
        return max(1, min(most, int((target / 2 - a) / b)))

    def finish_s(self, rows: int, ahead_rows: int, busy_s: float) -> float | None:
        """Predicted seconds until a new item of `rows` is answered, behind `ahead_rows`
        queued rows, with the model busy for `busy_s` more; None before any pass."""
        estimate = self.cost.estimate()
        if estimate is None:
            return None
        a, b = estimate
        total = ahead_rows + rows
        passes = -(-total // self.cap)  # ceil
        return busy_s + (passes * a + total * b) / self.limits.max_concurrent

    def remaining_s(self, rows: int, elapsed_s: float) -> float:
        """Predicted seconds left of a running pass of `rows` that started `elapsed_s` ago."""
        estimate = self.cost.estimate()
        if estimate is None:
            return 0.0
        return max(0.0, estimate[0] + estimate[1] * rows - elapsed_s)

    def refuses(self, rows: int, ahead_rows: int, busy_s: float) -> float | None:
        """The predicted finish of an item that would be over the target, else None: the
        item is taken. An idle model (nothing ahead, nothing busy) takes anything."""
        target = self.limits.latency_target_s
        if target <= 0 or (ahead_rows == 0 and busy_s <= 0):
            return None
        finish = self.finish_s(rows, ahead_rows, busy_s)
        if finish is None or finish + self.slack_s <= target:
            return None
        return finish + self.slack_s

    def on_answer(self, predicted_s: float, actual_s: float) -> None:
        """An item predicted (by `finish_s`) to be answered in `predicted_s` took `actual_s`.

        Learns the slack: what the prediction leaves out (the event loop's lag between
        passes, a pass slower than its fit) as the 99th percentile of actual - predicted, by
        a stochastic quantile step (a share of the target), so the target holds for 99% of
        answers. Between 0 and the target.
        """
        target = self.limits.latency_target_s
        if target <= 0:
            return
        above = actual_s - predicted_s > self.slack_s
        step = _STEP * target * (_QUANTILE if above else _QUANTILE - 1)
        self.slack_s = min(max(self.slack_s + step, 0.0), target)


def _mean(mean: float, value: float) -> float:
    """The weighted mean with `value` in; the first value (mean 0) stands alone, so the
    first arrivals do not read as faster than they are."""
    return value if mean == 0.0 else _DECAY * mean + (1 - _DECAY) * value


class OverloadedError(Exception):
    """An item refused because it would be answered after the latency target."""
