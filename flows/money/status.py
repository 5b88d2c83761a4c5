"""The states of an attempt and of a shot, shared by the journal, ledger, reports and render.

An attempt's life (one journal row):

    intent -> submitted -> running -> succeeded -> downloaded -> done
       |          |  \\                  (also: cached, skipped: one-shot rows)
       |          |   `-> failed | canceled            the vendor answered: settled
       |          `-----> lost       we lost contact; the job may still bill
       |          `-----> abandoned  deadline passed, no confirmed cancel; may still bill
       |          `-----> cancel_requested  the vendor took our cancel request but has not
       |                             said the job stopped; it may still finish and bill
       `---------------> unconfirmed the submit may have been taken; never resent

The money of `AT_RISK` rows (every job still at a vendor, and every submit that may have
reached one) is counted at its reservation (held against the cap, reported at risk) until the
vendor gives a final answer: a later run of the folder or `storyreel reconcile` asks.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    INTENT = "intent"  # about to submit: money reserved, nothing sent yet (or no answer seen)
    SUBMITTED = "submitted"  # the vendor accepted; job_id known
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # the vendor says done and was paid; clip not yet downloaded
    DOWNLOADED = "downloaded"  # raw clip on disk
    DONE = "done"  # conformed and ready for assembly
    FAILED = "failed"
    CANCELED = "canceled"
    UNCONFIRMED = "unconfirmed"  # a submit may have been taken: a person decides
    ABANDONED = "abandoned"  # we stopped waiting and the vendor did not confirm a cancel
    LOST = "lost"  # lost contact with a submitted job
    CANCEL_REQUESTED = "cancel_requested"  # asked to stop; the vendor has not confirmed it
    SKIPPED = "skipped"  # not attempted (budget, on_exhausted)
    CACHED = "cached"  # clip reused from the cache, nothing paid


STATUSES = frozenset(Status)
TERMINAL = frozenset({Status.DONE, Status.FAILED, Status.CANCELED, Status.UNCONFIRMED,
                      Status.SKIPPED, Status.CACHED})
# jobs known to a vendor and not settled: polled again by a resumed run or `reconcile`
AT_VENDOR = frozenset({Status.SUBMITTED, Status.RUNNING, Status.LOST, Status.ABANDONED,
                       Status.CANCEL_REQUESTED})
# money that may have been charged but has no final answer: reported at its reservation
AT_RISK = AT_VENDOR | {Status.INTENT, Status.UNCONFIRMED}
SUCCEEDED = frozenset({Status.SUCCEEDED, Status.DOWNLOADED, Status.DONE})
NOT_ATTEMPTS = frozenset({Status.CACHED, Status.SKIPPED})


class ShotStatus(StrEnum):
    """How one shot ended in a run."""

    DONE = "done"
    CACHED = "cached"
    FAILED = "failed"
    SKIPPED = "skipped"  # the budget refused every option
    UNCONFIRMED = "unconfirmed"  # a submit may have been taken: not resent


GOOD = frozenset({ShotStatus.DONE, ShotStatus.CACHED})


class Verdict(StrEnum):
    """Why an attempt failed, as the first word of its reason (cost.csv failure_reason)."""

    BUDGET = "budget"
    CONTENT_POLICY = "content_policy"
    INVALID_REQUEST = "invalid_request"
    AUTH = "auth"
    INSUFFICIENT_CREDIT = "insufficient_credit"
    CHECK = "check"  # the clip came back but failed a clip check (black, frozen, silent)


# the same request to the same vendor would fail the same way: no retry on that option. A
# failed clip check is not: another job of the same request makes another clip.
FINAL = frozenset(Verdict) - {Verdict.CHECK}
