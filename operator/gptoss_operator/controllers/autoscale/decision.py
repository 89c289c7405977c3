"""How many vLLM pods a model should have: a pure function of its recent load.

The load is the model's work in flight: its queued InferenceJobs plus whichever is larger
of its running InferenceJobs and the requests vLLM itself reports running or waiting
(clients may call the endpoint directly). A pod is wanted per ``target`` of it.

Like the HorizontalPodAutoscaler's stabilization windows, a scale up goes only to the
smallest count wanted over its window and a scale down only to the largest count wanted
over its (longer) window, so a burst or a lull shorter than the window moves nothing.
Wanted counts are computed per replica *asked for*, not per replica ready, so a pod
that takes minutes to load its weights does not make the autoscaler ask for more.
Scaling to zero needs the whole idle window without any work; waking needs one job.
A history that started recently (the operator restarted) moves nothing until it spans
the window in question (waking from zero excepted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gptoss_operator.api.model import Autoscaling

SCALED_UP = "ScaledUp"
SCALED_DOWN = "ScaledDown"
SCALED_TO_ZERO = "ScaledToZero"
WOKEN = "Woken"


@dataclass(frozen=True)
class Load:
    """The model's work at one moment."""

    pending: int = 0
    running: int = 0
    engine: int | None = None  # vLLM's running + waiting requests over all pods, if read
    batch: int = 0  # requests the model's InferenceBatches keep in flight (see batch_demand)

    @property
    def in_flight(self) -> int:
        # The engine's own count includes the jobs' and the batches' requests it holds.
        return self.pending + max(self.running + self.batch, self.engine or 0)

    def describe(self) -> str:
        text = f"{self.in_flight} in flight ({self.pending} queued, {self.running} running"
        if self.batch:
            text += f", {self.batch} for batches"
        if self.engine is not None:
            text += f", {self.engine} in vLLM"
        return text + ")"


@dataclass(frozen=True)
class Sample:
    at: float  # seconds on a monotonic clock
    load: Load


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str  # one of the constants above
    message: str


def wanted(policy: Autoscaling, target: int, load: Load) -> int:
    """Pods for this load, between max(1, minReplicas) and maxReplicas."""
    count = math.ceil(load.in_flight / target)
    return min(policy.maxReplicas, max(count, policy.minReplicas, 1))


def in_window(history: Sequence[Sample], start: float) -> list[Sample]:
    """The samples in effect at some moment from ``start`` on: the last one taken at or
    before ``start`` (it held until the next) and those taken since. History is in time
    order and records a sample when the load changes."""
    first = 0
    for index, sample in enumerate(history):
        if sample.at <= start:
            first = index
        else:
            break
    return list(history[first:])


def decide(
    policy: Autoscaling,
    target: int,
    history: Sequence[Sample],
    current: int,
    now: float,
    since: float,
) -> Decision | None:
    """The new replica count, or None to keep ``current``.

    ``history``: load samples in time order, the last one being now's; ``since``: when
    the history began (nothing is known of the load before).
    """
    if not history:
        return None
    load = history[-1].load
    observed = now - since
    if current == 0:
        if load.in_flight > 0:
            count = wanted(policy, target, load)
            return Decision(count, WOKEN, f"0 → {count} replicas: {load.describe()}")
        if policy.minReplicas > 0:
            count = policy.minReplicas
            return Decision(count, SCALED_UP, f"0 → {count} replicas: minReplicas")
        return None
    if current > policy.maxReplicas:
        count = policy.maxReplicas
        return Decision(count, SCALED_DOWN, f"{current} → {count} replicas: maxReplicas")
    floor = max(policy.minReplicas, 1)
    if current < floor:
        return Decision(floor, SCALED_UP, f"{current} → {floor} replicas: minReplicas")
    idle_window = in_window(history, now - policy.scaleToZeroAfterSeconds)
    if (
        policy.minReplicas == 0
        and observed >= policy.scaleToZeroAfterSeconds
        and all(sample.load.in_flight == 0 for sample in idle_window)
    ):
        return Decision(
            0,
            SCALED_TO_ZERO,
            f"{current} → 0 replicas: no work for {policy.scaleToZeroAfterSeconds}s",
        )
    up_window = in_window(history, now - policy.scaleUpStabilizationSeconds)
    up = min(wanted(policy, target, sample.load) for sample in up_window)
    if up > current and observed >= policy.scaleUpStabilizationSeconds:
        return Decision(
            up, SCALED_UP, f"{current} → {up} replicas: {load.describe()}, target {target} each"
        )
    if observed < policy.scaleDownStabilizationSeconds:
        return None
    down_window = in_window(history, now - policy.scaleDownStabilizationSeconds)
    down = max(wanted(policy, target, sample.load) for sample in down_window)
    if down < current:
        return Decision(
            down,
            SCALED_DOWN,
            f"{current} → {down} replicas: at most {down * target} in flight over the "
            f"last {policy.scaleDownStabilizationSeconds}s, target {target} each",
        )
    return None


def initial_replicas(policy: Autoscaling, target: int, load: Load) -> int:
    """The count for a model's first Deployment: its minimum, or what its queue wants
    already (jobs may wait for a model that is still downloading)."""
    if load.in_flight == 0:
        return policy.minReplicas
    return wanted(policy, target, load)


def record(history: list[Sample], sample: Sample, keep_seconds: float) -> None:
    """Append ``sample`` if the load changed, and drop samples no window can reach."""
    if not history or history[-1].load != sample.load:
        history.append(sample)
    start = sample.at - keep_seconds
    # Keep the last sample before the oldest window's start: it was in effect then.
    while len(history) > 1 and history[1].at < start:
        history.pop(0)


def zero_message(policy: Autoscaling | None, decision: Decision | None) -> str:
    """Why a model has no pods, for its Serving condition."""
    if policy is None:
        return "spec.serving.replicas is 0"
    if decision is not None and decision.reason == SCALED_TO_ZERO:
        return f"{decision.message}; a new InferenceJob wakes it"
    return "no work (spec.serving.autoscaling.minReplicas is 0); a new InferenceJob wakes it"
