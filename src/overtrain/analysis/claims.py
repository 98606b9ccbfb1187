"""A paper's claim checked on stored results: the row every study's claims table is made of."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Verdict = Literal["PASS", "FAIL", "N/A"]


@dataclass
class Claim:
    """One claim of a paper checked on stored results.

    Attributes:
        claim: what the paper says, in a few words.
        statistic: what was measured, with its units.
        value: the measured statistic (None when it could not be computed).
        ci_low, ci_high: its confidence interval, when there is one.
        threshold: the pass condition, in words (e.g. ``"peak within ±10% of n"``).
        verdict: ``PASS``, ``FAIL`` or ``N/A`` (not testable with these runs; `detail` says why).
        detail: anything a reader needs to interpret the verdict.
    """

    claim: str
    statistic: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    threshold: str
    verdict: str  # PASS | FAIL | N/A
    detail: str = ""

    def row(self) -> dict[str, Any]:
        """The ``evals.jsonl`` row of the claim (``record = 'claim'``)."""
        return {"record": "claim", **asdict(self)}


def check(
    claim: str,
    statistic: str,
    value: float | None,
    passed: bool | None,
    threshold: str,
    ci: tuple[float, float] | None = None,
    detail: str = "",
) -> Claim:
    """A `Claim` with its verdict from `passed` (None: N/A)."""
    verdict = "N/A" if passed is None or value is None else ("PASS" if passed else "FAIL")
    lo, hi = ci if ci is not None else (None, None)
    return Claim(
        claim, statistic, None if value is None else float(value), lo, hi, threshold, verdict, detail
    )
