"""Message states a user can see in ``mailops queue``.

Kept apart from :mod:`mailops.models` so the send and deliver path can use
them without importing SQLModel.
"""

STAGED = "staged"  # written by a send that is still validating its batch; never delivered
QUEUED = "queued"
SENDING = "sending"  # claimed by a process; the lease says until when
SENT = "sent"
DEFERRED = "deferred"
FAILED = "failed"
CANCELLED = "cancelled"
DUE_STATES = (QUEUED, DEFERRED)
STATES = (STAGED, QUEUED, SENDING, SENT, DEFERRED, FAILED, CANCELLED)
