"""Poll cadence: never more than once per second, densest just after the expected end."""

from __future__ import annotations

from hypothesis import example, given, settings, strategies as st

from kling_demo.jobs.schedule import InferenceHistory, next_poll_delay


def simulate(expected: float | None, finish: float, horizon: float = 3600.0, lateness: float = 0.0) -> list[float]:
    """Times (s after submission) at which a task that ends at `finish` is polled, up to the poll that sees it.

    `lateness`: each poll happens that much after its planned time, as real ones do."""
    times, now = [], 0.0
    while now < horizon:
        now += next_poll_delay(now, expected) + lateness
        times.append(now)
        if now >= finish:
            break
    return times


@settings(max_examples=200, deadline=None)
@given(expected=st.one_of(st.none(), st.floats(1, 900)), finish=st.floats(0.1, 1200),
       lateness=st.floats(0, 0.15))
@example(expected=1.75, finish=2.0, lateness=0.0)  # once polled at 1.0, 1.8, 2.8 s: three polls in 2.8 s
@example(expected=5.8, finish=3.0, lateness=0.0)  # entering the grid 0.15 s after a grid point
def test_at_most_one_poll_per_second(expected, finish, lateness):
    times = simulate(expected, finish, lateness=lateness)
    assert times[0] >= 1.0
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(gap >= 0.8 - 1e-9 for gap in gaps)
    assert len(times) <= times[-1] + 1e-9, "never more polls than seconds elapsed"


@settings(max_examples=200, deadline=None)
@given(expected=st.floats(5, 900), lateness=st.floats(0, 0.15))
def test_polls_that_run_late_still_catch_the_expected_end(expected, lateness):
    times = simulate(expected, finish=expected, lateness=lateness)
    assert times[-1] - expected <= 0.1 + lateness


@settings(max_examples=200, deadline=None)
@given(expected=st.floats(5, 900))
def test_a_task_ending_on_time_is_seen_within_a_tenth_of_a_second(expected):
    times = simulate(expected, finish=expected)
    assert times[-1] - expected <= 0.1


def test_long_renders_use_fewer_polls_than_a_fixed_one_second_poll():
    # A 120 s render, the SDK would poll 120 times.
    assert len(simulate(None, 120.0)) < 80
    assert len(simulate(120.0, 120.0)) < 50
    # Even a render that overruns its expectation badly is still polled, at most every 5 s.
    late = simulate(60.0, 600.0)
    assert max(b - a for a, b in zip(late, late[1:])) <= 10.0
    assert late[-1] - 600.0 <= 5.0


def test_history_gives_the_median_per_model_and_duration():
    history = InferenceHistory()
    assert history.expected("m", 5) is None
    for seconds in (100, 120, 300):
        history.record("m", 5, seconds)
    history.record("m", 10, 50)
    assert history.expected("m", 5) == 120
    assert history.expected("m", 10) == 50
