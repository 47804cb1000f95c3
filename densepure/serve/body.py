"""A request body as the routes get it: bounded in size and time, decoded from gzip or deflate.

* Size: at most ``limit`` bytes as sent (413 as soon as the declared or streamed size passes it) and
  at most ``limit`` bytes once decoded (413: a small gzip bomb is refused after ``limit`` + 1 decoded
  bytes, never inflated whole).
* Time: the body must have arrived by the request's read deadline (``--read-timeout`` after its first
  byte, set by :mod:`densepure.serve.http11`; else from the route's start): 408, and the connection
  is closed.
* ``Content-Encoding``: ``identity``, ``gzip`` (RFC 1952) or ``deflate`` (RFC 1950's zlib stream, as
  tritonclient's ``request_compression_algorithm="deflate"`` sends; a raw RFC 1951 stream is accepted
  too); anything else is 415. The decoded bytes are what ``Inference-Header-Content-Length`` counts.
"""

from __future__ import annotations

import asyncio
import time
import zlib

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from densepure.serve.api import ApiError
from densepure.serve.http11 import DEADLINE_KEY

ENCODINGS = ("identity", "gzip", "deflate")


async def read_body(request: Request, limit: int, read_timeout_s: float) -> bytes:
    """The decoded body of ``request`` (module docstring: 408, 413, 415 as :class:`ApiError`)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower() or "identity"
    if encoding not in ENCODINGS:
        raise ApiError(415, f"Content-Encoding {encoding!r} is not supported; send one of {', '.join(ENCODINGS)}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {int(declared)} bytes; the limit is {limit} (--max-body-bytes)",
                       close=True)
    deadline = (request.scope.get("extensions") or {}).get(DEADLINE_KEY) or time.monotonic() + read_timeout_s
    try:  # wait_for, not asyncio.timeout (3.11+): Python 3.10 is supported (JetPack 6)
        raw = await asyncio.wait_for(_receive(request, limit), max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:  # the builtin TimeoutError only from 3.11
        raise ApiError(408, f"the request body did not arrive within {read_timeout_s:g} s (--read-timeout)",
                       close=True) from None
    if encoding == "identity":
        return raw
    return await run_in_threadpool(decode, raw, encoding, limit)


async def _receive(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is over {limit} bytes (--max-body-bytes)", close=True)
        chunks.append(chunk)
    return b"".join(chunks)


def decode(raw: bytes, encoding: str, limit: int) -> bytes:
    """``raw`` decoded (``gzip`` or ``deflate``), refused with 413 past ``limit`` decoded bytes and 400 if
    it is not one whole stream of that encoding."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}[encoding]
    try:
        try:
            out, stream = _inflate(raw, wbits, limit)
        except zlib.error:
            if encoding != "deflate":
                raise
            out, stream = _inflate(raw, -zlib.MAX_WBITS, limit)  # a raw deflate stream, as some clients send
    except zlib.error as exc:
        raise ApiError(400, f"the request body is not valid {encoding} data: {exc}") from None
    if len(out) > limit:
        raise ApiError(413, f"the request body decompresses to more than {limit} bytes (--max-body-bytes)")
    if not stream.eof:
        raise ApiError(400, f"the request body's {encoding} stream is truncated")
    if stream.unused_data:
        raise ApiError(400, f"{len(stream.unused_data)} bytes follow the end of the request body's {encoding} stream")
    return out


def _inflate(raw: bytes, wbits: int, limit: int):
    stream = zlib.decompressobj(wbits)
    return stream.decompress(raw, limit + 1), stream  # at most limit + 1 bytes are ever inflated
