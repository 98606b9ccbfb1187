"""A paper's claim checked on stored results: the row every study's claims table is made of.

A claim is a **finding** — a statement about the phenomenon that a reader could doubt — or a **check** — a
verification of a solver or an implementation (a peak of κ at the interpolation threshold, a closed form).
A finding's decision rule is calibrated where it can be (`overtrain.analysis.calibration`): ``fpr`` is how
often the rule passes on null data at the study's measured noise, ``power`` how often it passes on a
planted effect of the paper's size. A finding resting on fewer than `MIN_SEEDS` seeds (where seeds vary),
or whose rule passed but passes null data more often than `MAX_FPR`, is ``UNDERPOWERED``, never ``PASS``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # a type only: claims stay importable without numpy's calibration machinery
    from overtrain.analysis.calibration import Calibration

Verdict = Literal["PASS", "FAIL", "N/A", "UNDERPOWERED"]
ClaimType = Literal["finding", "check"]

MAX_FPR = 0.05
"""A finding may PASS only if its rule passes at most this often on null data."""

MIN_SEEDS = 4
"""A finding over seeds may PASS only with at least this many independent seeds."""


@dataclass
class Claim:
    """One claim of a paper checked on stored results.

    Attributes:
        claim: what the paper says, in a few words.
        statistic: what was measured, with its units.
        value: the measured statistic (None when it could not be computed).
        ci_low, ci_high: its confidence interval, when there is one.
        threshold: the pass condition, in words (e.g. ``"peak within ±10% of n"``).
        verdict: ``PASS``, ``FAIL``, ``N/A`` (not testable with these runs; `detail` says why) or
            ``UNDERPOWERED`` (the rule passed, but it passes too often on null data, or too few seeds).
        detail: anything a reader needs to interpret the verdict.
        type: ``finding`` or ``check`` (module docstring).
        fpr: the rule's false-positive rate on null data at the measured noise (None: not calibrated).
        power: the rule's pass rate on a planted effect of the paper's size (None: not calibrated).
    """

    claim: str
    statistic: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    threshold: str
    verdict: str  # PASS | FAIL | N/A | UNDERPOWERED
    detail: str = ""
    type: str = "finding"  # finding | check
    fpr: float | None = None
    power: float | None = None

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
    type: ClaimType = "finding",
) -> Claim:
    """A `Claim` with its verdict from `passed` (None: N/A)."""
    verdict = "N/A" if passed is None or value is None else ("PASS" if passed else "FAIL")
    lo, hi = ci if ci is not None else (None, None)
    return Claim(
        claim, statistic, None if value is None else float(value), lo, hi, threshold, verdict, detail, type
    )


def finding_verdict(passed: bool | None, fpr: float | None, n_seeds: int | None) -> str:
    """The verdict of a finding: with fewer than `MIN_SEEDS` seeds (where seeds vary) it is UNDERPOWERED
    whatever its rule says — so few seeds support neither a PASS nor a FAIL; otherwise PASS only when its
    rule passed and its false-positive rate is at most `MAX_FPR` (UNDERPOWERED when it passed without
    that), FAIL when the rule did not pass. None: N/A (nothing to test)."""
    if passed is None:
        return "N/A"
    if n_seeds is not None and n_seeds < MIN_SEEDS:
        return "UNDERPOWERED"
    if not passed:
        return "FAIL"
    return "PASS" if fpr is not None and fpr <= MAX_FPR else "UNDERPOWERED"


def calibrated(claim: Claim, passed: bool | None, cal: Calibration | None, n_seeds: int | None) -> Claim:
    """Give the finding `claim` its verdict (`finding_verdict`) from its rule's outcome `passed`, its
    calibration `cal` and the number of independent seeds (None where seeds do not vary), and store the
    calibration's fpr and power on it; without a calibration it cannot PASS."""
    claim.type = "finding"
    claim.verdict = finding_verdict(passed, cal.fpr if cal else None, n_seeds)
    if cal is not None:
        claim.fpr, claim.power = cal.fpr, cal.power
        claim.detail = f"{claim.detail}; {cal.describe()}" if claim.detail else cal.describe()
    else:
        claim.detail += "; its rule is not calibrated (no fpr: it cannot PASS)"
    return claim


def guard(claims: list[Claim]) -> list[Claim]:
    """The invariant of every claims table, applied where claims are logged: a finding PASSes only with a
    measured false-positive rate at most `MAX_FPR`; any other PASS of a finding becomes UNDERPOWERED."""
    for c in claims:
        if c.type == "finding" and c.verdict == "PASS" and (c.fpr is None or c.fpr > MAX_FPR):
            c.verdict = "UNDERPOWERED"
            c.detail += "; no calibrated false-positive rate ≤ 5%: not a PASS"
    return claims


def headline(claims: list[dict[str, Any]]) -> str:
    """ "k of n findings hold", with the checks counted apart and the PASSes that lack a measured
    false-positive rate named as such."""
    findings = [c for c in claims if (c.get("type") or "finding") == "finding"]
    checks = [c for c in claims if c.get("type") == "check"]
    held = [c for c in findings if c["verdict"] == "PASS"]
    unmeasured = sum(c.get("fpr") is None for c in held)
    under = sum(c["verdict"] == "UNDERPOWERED" for c in findings)
    text = f"{len(held)} of {len(findings)} findings hold"
    if unmeasured:
        text += f" ({unmeasured} of them without a measured false-positive rate: their rules are not calibrated yet)"
    if under:
        text += f"; {under} underpowered (fewer than 4 seeds, or a rule that passes null data more than 5% of the time)"
    if checks:
        text += f"; {sum(c['verdict'] == 'PASS' for c in checks)} of {len(checks)} checks pass"
    return text + "."
