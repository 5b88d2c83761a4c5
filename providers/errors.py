"""storyreel's one exception tree.

* StoryreelError                 everything storyreel raises on purpose
  x SpecError                    a storyboard is wrong; .issues = [(place, message)]
  x PlanError                    a valid storyboard that cannot run as asked
    + MissingKeyError            no API key for a provider that may be used
    + BudgetError                estimate over the cap, or a reservation refused
  x ProviderError                a vendor said no, or never answered well;
    |                            .provider .shot_id .job_id .vendor_message
    |                            .may_have_charged: the verdict on money, decided once
    |                            where the answer was read (providers/http.py, adapters)
    + AuthError                  401/403 bad key: never retried
    + InsufficientCreditError    402, fal's "User is locked": never retried
    + RateLimitedError           429; .retry_after seconds
    + ContentPolicyError         moderation/safety: not retried with the same prompt
    + InvalidRequestError        400/422: the request itself is wrong
    + TransientError             5xx, resets, timeouts: retried where safe
      + MalformedAnswerError     a 2xx status answer we cannot read (a field of the wrong
                                 type, a negative or NaN cost): the job stays at risk
    + NotFoundError              404 (job or result gone, e.g. expired URL)
    + JobFailedError             the vendor ran the job and it failed
    + JobTimeoutError            our per-job deadline passed
    + BadMediaError              the download is not a complete, playable video
    + UnconfirmedSubmitError     a paid submit may have been taken: no answer, a 5xx, or a
                                 2xx without a job id or not JSON (may_have_charged)
    + UnsafeURLError             a vendor named a URL we refuse to fetch (file:, private
                                 address, plain http, too big): never retried
  x MediaError                   ffmpeg failed or produced a wrong file; .argv .stderr_tail
  x BusyError                    the run folder is another run's (flows/run/lock.py)

Messages never contain API keys: adapters put keys only in headers and
error text is built from vendor bodies, which are scrubbed by `redact`.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote, quote_plus

_SECRETS: set[str] = set()
_PATTERN: re.Pattern[str] | None = None


def _forms(secret: str) -> set[str]:
    """The ways a key shows up in text: as is, URL-encoded, JSON-escaped, and base64 (standard
    and URL-safe) at each of the three alignments it can have inside a longer encoded value,
    e.g. `Basic base64(user:key)`; for those only the characters that depend on the key alone."""
    found = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    raw = secret.encode()
    for shift in range(3):
        enc = base64.b64encode(b"\0" * shift + raw).decode()
        lead = -(-shift * 4 // 3)  # chars touched by the padding bytes in front
        full = (shift + len(raw)) // 3 * 4  # chars of complete 3-byte groups
        cores = [enc[lead:full]] + ([enc, enc.rstrip("=")] if shift == 0 else [])
        for form in [c for core in cores for c in (core, core.replace("+", "-")
                                                   .replace("/", "_"))]:
            if len(form) >= 8:
                found.add(form)
    return {f for f in found if len(f) >= 4}


def register_secret(value: str | None) -> None:
    """Remember a key so that `redact` can mask it wherever it shows up."""
    global _PATTERN
    if value and len(value) >= 4 and value not in _SECRETS:
        _SECRETS.add(value)
        forms = set().union(*(_forms(s) for s in _SECRETS))
        # longest first: a key that contains another key is masked whole
        _PATTERN = re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))


def redact(text: str) -> str:
    """`text` with every registered key masked as `***`, in any of its encoded forms."""
    pattern = _PATTERN
    if pattern is None or not text:
        return text
    return pattern.sub("***", text)


class StoryreelError(Exception):
    """Base of everything storyreel raises on purpose (shown to users without a traceback)."""


class SpecError(StoryreelError):
    """One or more problems in a storyboard, each tied to its place (`shots[3].duration`)."""

    def __init__(self, issues: Iterable[tuple[str, str]], source: str | None = None) -> None:
        self.issues: list[tuple[str, str]] = list(issues)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(
            f"{prefix}{place}: {msg}" if place else f"{prefix}{msg}" for place, msg in self.issues
        )


class PlanError(StoryreelError):
    """A valid storyboard that cannot run as asked (catalog, keys, budget)."""


class MissingKeyError(PlanError):
    pass


class BudgetError(PlanError):
    pass


class ProviderError(StoryreelError):
    """A vendor failure, carrying where it happened and what the vendor said."""

    retryable: bool = False  # may the same request be sent again?
    # May the vendor have taken (and billed) the request that raised this? Only a submit
    # refused before acceptance is False; callers keep such money reserved and reported.
    may_have_charged: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        shot_id: str | None = None,
        job_id: str | None = None,
        status_code: int | None = None,
        vendor_message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = redact(message)
        self.provider = provider
        self.shot_id = shot_id
        self.job_id = job_id
        self.status_code = status_code
        self.vendor_message = redact(vendor_message) if vendor_message else None
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def kind(self) -> str:
        """Short machine-readable reason, used in cost.csv's failure_reason."""
        return _KINDS.get(type(self), "error")

    def __str__(self) -> str:
        parts = []
        if self.shot_id:
            parts.append(f"shot {self.shot_id}")
        if self.provider:
            parts.append(self.provider)
        if self.job_id:
            parts.append(f"job {self.job_id}")
        where = f"[{', '.join(parts)}] " if parts else ""
        return f"{where}{self.kind}: {self.message}"

    def at(self, *, shot_id: str | None = None, job_id: str | None = None) -> ProviderError:
        """Fill in context that the raising layer did not know."""
        if shot_id and not self.shot_id:
            self.shot_id = shot_id
        if job_id and not self.job_id:
            self.job_id = job_id
        return self


class AuthError(ProviderError):
    pass


class InsufficientCreditError(ProviderError):
    pass


class RateLimitedError(ProviderError):
    retryable = True


class ContentPolicyError(ProviderError):
    pass


class InvalidRequestError(ProviderError):
    pass


class TransientError(ProviderError):
    retryable = True


class MalformedAnswerError(TransientError):
    pass


class NotFoundError(ProviderError):
    pass


class JobFailedError(ProviderError):
    pass


class JobTimeoutError(ProviderError):
    pass


class BadMediaError(ProviderError):
    retryable = True  # a download can be fetched again; the job is already paid


class UnconfirmedSubmitError(ProviderError):
    """The submit may have been taken: never resent by any retry loop (issue: pay twice)."""

    may_have_charged = True


class UnsafeURLError(ProviderError):
    """A URL from a vendor's answer that storyreel will not fetch; fetching it again would
    be refused again, so it is never retried."""


_KINDS: dict[type, str] = {
    AuthError: "auth",
    InsufficientCreditError: "insufficient_credit",
    RateLimitedError: "rate_limited",
    ContentPolicyError: "content_policy",
    InvalidRequestError: "invalid_request",
    TransientError: "transient",
    MalformedAnswerError: "malformed_answer",
    NotFoundError: "not_found",
    JobFailedError: "job_failed",
    JobTimeoutError: "timeout",
    BadMediaError: "bad_media",
    UnconfirmedSubmitError: "unconfirmed",
    UnsafeURLError: "unsafe_url",
}


class MediaError(StoryreelError):
    """ffmpeg failed, or its output did not verify."""

    def __init__(self, message: str, argv: Sequence[str] | None = None, stderr: str = "") -> None:
        self.argv = list(argv or [])
        self.stderr_tail = "\n".join(stderr.strip().splitlines()[-20:])
        text = message if not self.stderr_tail else f"{message}\n{self.stderr_tail}"
        super().__init__(text)


class BusyError(StoryreelError):
    """Another run owns the run folder (its journal and ledger would be worked twice)."""


class OrchestratorError(StoryreelError):
    """The local Prefect server (flows/orchestration/server.py) could not be started or reached."""


class StoreError(StoryreelError):
    """An S3-compatible store (run outputs, the shared clip cache) refused or failed a request;
    the message names the bucket and the error code, never a signed URL or a credential."""
