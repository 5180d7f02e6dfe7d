"""W3C Trace Context (``traceparent``), the one home of its format.

A request's ``traceparent`` header (version-trace_id-parent_id-flags, lowercase hex) names
its trace and the caller's span. The web tier takes it (or starts a trace for a request
without one), makes a span of its own in that trace, answers with that span's
``traceparent``, writes it in Apache's access log and queues it with the request, so the
worker's log line for the batch names the same trace. Spans are not exported (yet): the
ids line up for when they are.
"""

import re
import secrets
from dataclasses import dataclass

HEADER = "traceparent"
# Version 00 exactly; a later version may append fields after the flags.
FORMAT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
NOT_SAMPLED = "00"


@dataclass(frozen=True)
class TraceParent:
    trace_id: str
    span_id: str
    flags: str = NOT_SAMPLED

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> "TraceParent":
        """A new span in the same trace, whose parent this one is."""
        return TraceParent(self.trace_id, secrets.token_hex(8), self.flags)


def parse(header: str | None) -> TraceParent | None:
    """The ``traceparent`` header's value, or None when it is absent or invalid (a
    receiver then starts a new trace, as the specification says)."""
    found = FORMAT.fullmatch((header or "").strip())
    if found is None:
        return None
    version, trace_id, span_id, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceParent(trace_id, span_id, flags)


def new() -> TraceParent:
    """The root of a new trace (not sampled: nothing records it)."""
    return TraceParent(secrets.token_hex(16), secrets.token_hex(8))
