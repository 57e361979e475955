"""Extra checks for the schemathesis run: no response may reveal internals."""

import schemathesis

# Text that would betray a stack trace, an internal error message, a SQL fragment,
# a file path or a crate name.
INTERNAL_MARKERS = (
    "panicked",
    "sqlx",
    "reqwest",
    "hyper",
    "tokio",
    "serde",
    "src/",
    ".rs:",
    "SELECT ",
    "INSERT ",
    "UPDATE ",
    "stack backtrace",
    "RUST_BACKTRACE",
)


@schemathesis.check
def no_internal_details(ctx, response, case):
    """Fail if a response body carries internal detail."""
    body = response.text or ""
    for marker in INTERNAL_MARKERS:
        if marker in body:
            raise AssertionError(f"The response reveals internal detail ({marker!r}): {body[:200]}")


@schemathesis.check
def errors_have_the_contract_shape(ctx, response, case):
    """Every 4xx and 5xx body is {error, message, ...}; every 5xx has an error ID."""
    if response.status_code < 400 or case.path == "/health" or case.path.startswith("/health/"):
        return
    body = response.json()
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not isinstance(body.get("message"), str):
        raise AssertionError(f"Error body is not {{error, message}}: {response.text[:200]}")
    if response.status_code >= 500 and not str(body.get("errorId", "")).startswith("ERR-"):
        raise AssertionError(f"A {response.status_code} without an errorId: {response.text[:200]}")
