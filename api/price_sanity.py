"""Whether a catalog price can be trusted to check a spending limit with, and what a run does when a job costs more
than its estimate. Pure rules: no I/O, no clock.

A limit is only as good as the price it is checked with: a catalog that answers 0 (or $0.0001) per image admits any
list under any limit. Such a price is not trusted under a limit: the last sound price seen is used instead, or the run
is refused and says what to do.

    verdict = judge_price(reported_usd, last_sound_usd)   # .usd to check with, .note to warn of, or .refusal
    text = overcharge_line(request_id, cost_usd, estimate_usd)  # said once per run; the items not yet sent stop
"""

from __future__ import annotations

from dataclasses import dataclass

# Seedream 4.0 costs a few cents per image; no price under half a cent is taken for this model's.
MIN_PLAUSIBLE_USD_PER_IMAGE = 0.005
# A price under this share of the last sound one seen (within the day) is taken for a broken answer, not a price cut.
FAR_BELOW_SHARE = 0.25
# A charge above its estimate by more than this (rounding of what RunComfy reports) is a charge above it.
OVERCHARGE_SLACK_USD = 0.005


def money(usd: float) -> str:
    """'$0.030', '$0.0001', '$0': as many digits as a small price needs to be seen for what it is."""
    if usd == 0:
        return "$0"
    if usd >= 0.01:
        return f"${usd:.3f}"
    return f"${usd:.6f}".rstrip("0")


def plausible(usd: float | None) -> bool:
    """A price this model could have on its own: a number of at least `MIN_PLAUSIBLE_USD_PER_IMAGE`."""
    return usd is not None and usd >= MIN_PLAUSIBLE_USD_PER_IMAGE


@dataclass(frozen=True)
class PriceVerdict:
    usd: float | None  # what the limit is checked with; None when refused
    note: str | None = None  # a warning to give once (the reported price was set aside)
    refusal: str | None = None  # why the limit cannot be checked (the caller adds what to do and "Nothing was sent.")
    trusted: bool = True  # the reported price itself is used (and may be remembered as the last sound one)


def judge_price(reported_usd: float, last_sound_usd: float | None) -> PriceVerdict:
    """What a limit is checked with when the catalog reports `reported_usd` per image, the last sound price seen
    being `last_sound_usd` (None: none within the day, or not a plausible one)."""
    last = last_sound_usd if plausible(last_sound_usd) else None
    too_low = not plausible(reported_usd)
    far_below = last is not None and reported_usd < last * FAR_BELOW_SHARE
    if not (too_low or far_below):
        return PriceVerdict(reported_usd)
    reported = f"the price RunComfy reports ({money(reported_usd)} per image) does not look right for this model"
    if last is not None:
        return PriceVerdict(
            last,
            note=f"{reported}; your spending limit is checked with the last sound price seen, {money(last)} per image",
            trusted=False,
        )
    return PriceVerdict(
        None,
        refusal=f"{reported} (it costs a few cents per image), and no sound price was seen in the last 24 hours",
        trusted=False,
    )


def overcharged(cost_usd: float | None, estimate_usd: float | None) -> bool:
    """A job charged more than the estimate its spending limit was checked with."""
    return cost_usd is not None and estimate_usd is not None and cost_usd > estimate_usd + OVERCHARGE_SLACK_USD


def overcharge_line(request_id: str, cost_usd: float, estimate_usd: float) -> str:
    """The warning a run gives once, at its first job charged above its estimate."""
    return (
        f"request {request_id} cost ${cost_usd:.2f}, more than the ${estimate_usd:.2f} your spending limit was checked with "
        "(RunComfy's price changed meanwhile, or its catalog was wrong); the items of this run not yet sent are not sent"
    )


def overcharge_refusal(request_id: str, cost_usd: float, estimate_usd: float) -> str:
    """Why an item not yet sent is not sent, once a job of its run was charged above its estimate."""
    return (
        f"Not sent: request {request_id} of this run cost ${cost_usd:.2f}, more than the ${estimate_usd:.2f} estimated "
        "when your spending limit was checked, so the items not yet sent were held back to keep within the limit. Check "
        "the price on runcomfy.com, then run the node again: what is done is saved and collected without paying again. "
        "Nothing was sent for this item."
    )
