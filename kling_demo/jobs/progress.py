"""How far along a job is and how long it should still take, from its updates: pure data, no page code.

The estimate starts from the model's documented typical render time (`ModelSpec.typical_render_seconds`, or
the sandbox's configured render time) and is replaced by the median of this app's own recent renders once
there is one (`schedule.InferenceHistory`, which also gives the fastest and slowest of them). A render past its
expectation runs longer than usual from that very moment (nothing is left of the estimate to count down), and the
bar stops short of the end until the video is really there.
"""

from __future__ import annotations

from ..models import Estimate, EstimateSource, JobUpdate, ProgressView, Stage, Step

# Where each stage sits on the bar: a render is most of the wait, so it gets most of the bar.
RENDER_START = 0.08
RENDER_END = 0.92
STAGE_FLOOR = {
    Stage.PREPARING: 0.0, Stage.WAITING: 0.02, Stage.UPLOADING: 0.04, Stage.SEARCHING: RENDER_START,
    Stage.SUBMITTED: RENDER_START, Stage.QUEUED: RENDER_START, Stage.PROCESSING: RENDER_START,
    Stage.DOWNLOADING: RENDER_END, Stage.DONE: 1.0, Stage.FAILED: 0.0, Stage.STOPPED: 0.0,
    Stage.SUBMITTING: 0.06,
}
STEP_OF = {
    Stage.PREPARING: Step.CHECK, Stage.WAITING: Step.WAIT, Stage.UPLOADING: Step.UPLOAD, Stage.SEARCHING: Step.RENDER,
    Stage.SUBMITTED: Step.RENDER, Stage.QUEUED: Step.RENDER, Stage.PROCESSING: Step.RENDER,
    Stage.DOWNLOADING: Step.DOWNLOAD, Stage.SUBMITTING: Step.UPLOAD,
}
RENDERING = (Stage.SUBMITTED, Stage.QUEUED, Stage.PROCESSING)
STEPS = list(Step)  # in order


def estimate(typical: float | None, recent: float | None,
             spread: tuple[float, float] | None = None) -> Estimate | None:
    """This app's recent median (with the `spread` of its recent renders, fastest and slowest) when it has one,
    else the typical time, else nothing."""
    if recent:
        fastest, slowest = spread if spread else (None, None)
        return Estimate(recent, EstimateSource.HISTORY, slowest=slowest, fastest=fastest)
    if typical:
        return Estimate(typical, EstimateSource.TYPICAL)
    return None


class Tracker:
    """Follows one job's updates and turns each into a `ProgressView`."""

    def __init__(self, expected: Estimate | None) -> None:
        self.expected = expected
        self.submitted_at: float | None = None
        self.seen: list[Step] = []

    def view(self, update: JobUpdate) -> ProgressView:
        stage = update.stage
        if stage in RENDERING and self.submitted_at is None:
            # A job sees its task from its submission; a page watching one met it running (`running_for` so far).
            self.submitted_at = update.elapsed - (update.running_for or 0.0)
        step = STEP_OF.get(stage)
        if step is not None and step not in self.seen:
            # The steps before it were passed, here or (a task resumed or watched from another page) elsewhere.
            self.seen.extend(s for s in Step if s not in self.seen and s is not Step.WAIT
                             and STEPS.index(s) < STEPS.index(step))
            self.seen.append(step)
        rendering_for = update.elapsed - self.submitted_at if self.submitted_at is not None else None
        fraction, remaining, late = self._where(stage, rendering_for)
        current = step if not stage.is_final else None
        done = stage is Stage.DONE  # every step is behind a finished video, also one fetched already done
        steps = tuple((s, done or (s in self.seen and s is not current), s is current) for s in self._shown_steps())
        return ProgressView(fraction, stage, update.elapsed, rendering_for, remaining, late,
                            update.place if stage is Stage.WAITING else None, steps, self.expected)

    def _shown_steps(self) -> list[Step]:
        """Every step, but waiting for a slot only when this job waited."""
        return [s for s in Step if s is not Step.WAIT or Step.WAIT in self.seen]

    def _where(self, stage: Stage, rendering_for: float | None) -> tuple[float, float | None, bool]:
        """The bar's fraction, the seconds still expected, and whether the render runs late."""
        floor = STAGE_FLOOR[stage]
        if stage is Stage.DONE:
            return 1.0, 0.0, False
        if stage not in RENDERING or rendering_for is None:
            remaining = self.expected.seconds if self.expected and stage in (
                Stage.PREPARING, Stage.WAITING, Stage.UPLOADING, Stage.SUBMITTING) else None
            return floor, remaining, False
        if self.expected is None:
            return floor, None, False
        share = min(rendering_for / self.expected.seconds, 0.97) if self.expected.seconds > 0 else 0.97
        late = rendering_for >= self.expected.seconds  # at the estimate: nothing of it is left to count down
        remaining = None if late else self.expected.seconds - rendering_for
        return RENDER_START + (RENDER_END - RENDER_START) * share, remaining, late
