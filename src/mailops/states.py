"""Message states a user can see in ``mailops queue``.

A module of its own without imports, so any module can use them without
loading SQLAlchemy.
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
