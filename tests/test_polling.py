"""The polling cadence: quick first check, under two requests per second, slower after a long quiet spell."""

from runcomfy_seedream.api import PollSchedule


def simulate(seconds: float, change_every: float | None = None) -> list[float]:
    schedule, now, delays, last_change = PollSchedule(), 0.0, [], 0.0
    progressed = True
    while now < seconds:
        delay = schedule.next_delay(progressed=progressed)
        delays.append(delay)
        now += delay
        progressed = change_every is not None and now - last_change >= change_every
        if progressed:
            last_change = now
    return delays


def test_first_check_is_quick_and_the_rate_stays_under_two_per_second():
    delays = simulate(20.0, change_every=1.0)
    assert delays[0] <= 0.5
    assert len(delays) / sum(delays) < 2.0
    assert max(delays) <= 0.65 * 1.2 + 1e-9


def test_a_long_quiet_job_is_polled_less_often():
    delays = simulate(600.0)
    late = delays[-20:]
    assert min(late) >= 1.0 * 0.8 - 1e-9 and max(late) <= 1.0 * 1.2 + 1e-9
    assert len(delays) / sum(delays) < 1.2
