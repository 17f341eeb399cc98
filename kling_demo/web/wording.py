"""Words that fit sandbox mode: the job layer speaks of WaveSpeed and billing, which a local sandbox has neither of.

One table here instead of a sandbox flag threaded through every message of jobs.py: the page rewrites what
it shows when its backend is the embedded sandbox (the CLI and API clients get the job's own words).
"""

from __future__ import annotations

import re

_SANDBOX_REWRITES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(pattern), replacement) for pattern, replacement in (
    (r",? (?:and|or) (?:be )?billed", ""),  # "may still finish and be billed" → "may still finish"
    (r"\(and be billed\) ?", ""),
    (r"uploaded or billed", "uploaded"),
    (r"Free \(sandbox\): nothing is billed\.", "Free (sandbox): nothing here costs money."),
    (r"nothing is billed, so keys are not checked", "keys are not checked here (nothing costs money)"),
    (r"nothing you make here is billed", "nothing you make here costs money"),
    (r"To fetch a task submitted elsewhere, enter your own WaveSpeed key first\.",
     "In sandbox mode only tasks made here can be fetched."),
    (r"\b([Tt])he WaveSpeed key\b", r"\1he key"),  # a malformed key, refused before any use
    (r"[Nn]othing was billed", "nothing was spent"),
    (r"nothing is billed", "nothing is spent"),
    (r"billed", "spent"),
    (r"this Space's key", "the sandbox"),
    (r"WaveSpeed's", "the sandbox's"),
    (r"WaveSpeed", "the sandbox"),
))


def for_sandbox(text: str) -> str:
    """`text` as the sandbox's page shows it: no billing, no WaveSpeed, no Space's key."""
    for pattern, replacement in _SANDBOX_REWRITES:
        text = pattern.sub(replacement, text)
    return re.sub(r"(^|[.!?] |\*\* — )the sandbox", lambda m: m.group(1) + "The sandbox", text)
