"""The one place that reads Typesense's answers: every httpx error, HTTP status and body is
turned into the errors of errors.py (or a DocResult) here. Pure functions of a response.

A 200 whose body is not what the request expects (not JSON, not an object, a field missing or
of the wrong type) is a TargetError with a one-line message naming the request, never a
ValueError or KeyError. Safe from any thread (no state)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from cdc_daemon.errors import (
    AuthError,
    CollectionMissing,
    TargetError,
    TargetTimeout,
    TargetUnavailable,
)
from cdc_daemon.sink import OK, DocResult

_RAW_MESSAGE = re.compile(r'\s*\{\s*"message"\s*:\s*"(.*)', re.DOTALL)
DOCUMENT_NOT_FOUND = "Could not find a document with id"  # a 404's message, every version
NOT_READY_MARKERS = ("Not Ready or Lagging", "Could not find a leader")
# 422s that say the server can't take it now, in every version up to 30: out of disk or memory
# (the whole request, never a line), and (v26+) a schema change while another one runs.
BUSY_MARKERS = ("Rejecting write: running out of resource", "Another collection update operation")
SUCCESS_LINE = '{"success":true}'  # what Typesense 0.24 answers for an accepted document


# -- node-level failures: the request may go to the next node ---------------------------------


def transport_failure(
    exc: httpx.RequestError, node: str, what: str
) -> tuple[TargetUnavailable, bool]:
    """The error for a request that got no (whole) answer, and whether it may have arrived."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        # Never reached the node: certainly not applied.
        return TargetUnavailable(f"{node}: {type(exc).__name__}: {exc} ({what})"), False
    if isinstance(exc, httpx.TimeoutException):
        return TargetTimeout(f"{node}: timed out ({what})"), True
    # Sent, then the connection broke (e.g. a follower whose leader just died answers
    # "HTTP/1.1 0"): the node may still have forwarded or applied it.
    return TargetUnavailable(f"{node}: {type(exc).__name__}: {exc} ({what})"), True


def node_refusal(response: httpx.Response, node: str, what: str) -> TargetUnavailable | None:
    """5xx, 429, "not ready" and "busy" answers: this node can't take it now (None: it can).
    The body must have been read."""
    status = response.status_code
    text = response.text if status >= 400 else ""
    if (
        status >= 500
        or status == 429
        or (status >= 400 and any(m in text for m in NOT_READY_MARKERS))
        or (status == 422 and any(m in text for m in BUSY_MARKERS))
    ):
        return TargetUnavailable(f"{node}: HTTP {status}: {message(response)} ({what})")
    return None


def key_refused(response: httpx.Response) -> bool:
    return response.status_code in (401, 403)


def auth_error(response: httpx.Response, node: str) -> AuthError:
    return AuthError(f"{node}: HTTP {response.status_code}: the API key was refused")


def health_ok(response: httpx.Response) -> bool:
    """A /health answer of a node fit for writes. Since v26 a node out of disk or memory answers
    200 `{"ok": true, "resource_error": "OUT_OF_DISK"}` while it refuses every write."""
    if response.status_code != 200:
        return False
    try:
        answer = response.json()
        return answer.get("ok") is True and not answer.get("resource_error")
    except (ValueError, AttributeError):
        return False


def import_not_ready(response: httpx.Response) -> str | None:
    """An import answered 200 whose every line says the node is not ready: a node failure."""
    if response.status_code != 200 or not any(m in response.text for m in NOT_READY_MARKERS):
        return None
    lines = [line for line in response.text.split("\n") if line.strip()]
    if not lines or not any(m in lines[0] for m in NOT_READY_MARKERS):
        return None
    if all(any(m in line for m in NOT_READY_MARKERS) for line in lines):
        return f"import refused: {lines[0][:200]}"
    return None


# -- error answers ------------------------------------------------------------------------------


def message(response: httpx.Response) -> str:
    """The `message` of an error answer. 0.24.1 quotes ids into it unescaped (an id ending in
    a backslash makes the body invalid JSON): then the raw text after `"message": "`."""
    try:
        return str(response.json().get("message", response.text))[:300]
    except (ValueError, AttributeError):
        raw = _RAW_MESSAGE.match(response.text)
        return (raw.group(1) if raw else response.text)[:300]


def http_error(what: str, response: httpx.Response) -> TargetError:
    """A whole request refused: `what: HTTP 400: <message>`."""
    return TargetError(f"{what}: HTTP {response.status_code}: {message(response)}")


def collection_error(collection: str, response: httpx.Response) -> TargetError:
    if response.status_code == 404:
        return CollectionMissing(f"collection {collection!r} not found: {message(response)}")
    return http_error(f"import into {collection!r}", response)


# -- bodies of successful answers -------------------------------------------------------------


def unexpected(what: str, why: str, text: str) -> TargetError:
    """A 200 whose body is not what `what` answers: one line, the start of the body quoted."""
    return TargetError(f"{what}: unexpected answer: {why}: {text[:100]!r}")


def json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    return parse_object(response.text, what)


def parse_object(text: str, what: str) -> dict[str, Any]:
    """A JSON object, or a TargetError naming `what`."""
    try:
        answer = json.loads(text)
    except ValueError:
        raise unexpected(what, "not JSON", text) from None
    if not isinstance(answer, dict):
        raise unexpected(what, "not a JSON object", text)
    return answer


def text_field(answer: dict[str, Any], key: str, what: str) -> str:
    value = answer.get(key)
    if not isinstance(value, str):
        raise unexpected(what, f"no text {key!r}", json.dumps(answer))
    return value


def count_field(answer: dict[str, Any], key: str, what: str, missing: int | None = None) -> int:
    """`answer[key]`, a whole number; `missing` when it is absent (None: TargetError)."""
    value = answer.get(key, missing)
    if not isinstance(value, int) or isinstance(value, bool):
        raise unexpected(what, f"no count {key!r}", json.dumps(answer))
    return value


def object_list(answer: dict[str, Any], key: str, what: str) -> list[dict[str, Any]]:
    """`answer[key]`, a list of objects (e.g. a collection's fields, the aliases)."""
    value = answer.get(key)
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise unexpected(what, f"no list of objects {key!r}", json.dumps(answer))
    return value


def collection_answer(answer: dict[str, Any], what: str) -> dict[str, Any]:
    """A collection's schema as schema.py's comparisons read it: a text `name`, and `fields` a
    list of objects each with a text `name` and `type`."""
    text_field(answer, "name", what)
    for field in object_list(answer, "fields", what):
        if not isinstance(field.get("name"), str) or not isinstance(field.get("type"), str):
            raise unexpected(what, "a field without a text 'name' and 'type'", json.dumps(field))
    return answer


def exported_document(line: str, what: str) -> dict[str, Any]:
    """One line of an export: a document, with its text `id` (verify and sweeps read it)."""
    document = parse_object(line, what)
    text_field(document, "id", what)
    return document


def utf8_line(line: bytes, what: str) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise unexpected(what, "not UTF-8", repr(line[:100])) from None


def answered_id(response: httpx.Response) -> str | None:
    """The id of the document a DELETE or GET by id answered with."""
    try:
        found = response.json().get("id")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def import_results(text: str, count: int) -> list[DocResult]:
    """One result per document of an import, in order, from its answer's lines."""
    # Nearly always every line succeeded. A failed line quotes its document as an escaped JSON
    # string (or, since v28, not at all), so it never contains SUCCESS_LINE: counting is exact.
    if text.count(SUCCESS_LINE) == count == text.rstrip("\n").count("\n") + 1:
        return [OK] * count
    answers = [line for line in text.split("\n") if line.strip()]
    results = [import_line(line) for line in answers[:count]]
    missing = DocResult(ok=False, error="no result line for this document", retryable=True)
    return results + [missing] * (count - len(results))


def import_line(line: str) -> DocResult:
    """A document's result line; one that can't be read is retried (not the document's fault)."""
    if line == SUCCESS_LINE:  # nearly every line: no need to parse it
        return OK
    try:
        result = parse_object(line, "import")
        if result.get("success"):
            return OK
        code = int(result.get("code") or 0)
    except (TargetError, ValueError, TypeError, OverflowError):  # OverflowError: int(1e999)
        return DocResult(ok=False, error=f"unreadable result line: {line[:200]}", retryable=True)
    error = str(result.get("error", "rejected"))
    retryable = code >= 500 or code in (0, 429) or any(m in error for m in NOT_READY_MARKERS)
    return DocResult(ok=False, error=f"{code}: {error}" if code else error, retryable=retryable)
