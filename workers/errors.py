"""The error that stops a job, with a message for the user. Defined at the
bottom of the flow (jobs -> cluster -> workers) so that each layer raises it
without importing the one above."""


class JobError(RuntimeError):
    """A job-level error: the job cannot go on (or start); what it published stays."""
