"""Request content codings (RFC 9110 §8.4): streaming decode, size cap, corrupt streams."""

from __future__ import annotations

import asyncio
import gzip
import random
import zlib
from collections.abc import AsyncIterator

import pytest

from telerad.viewer_api.encoding import (
    STEP_BYTES,
    ContentTooLarge,
    CorruptContent,
    Inflater,
    UnsupportedContentCoding,
    content_codings,
    decoded_body,
)

#: Half random (incompressible), half repetitive: both paths of the deflate decoder.
PAYLOAD = random.Random(7).randbytes(300_000) + b"DICM" * 200_000


def deflate(data: bytes, wbits: int = zlib.MAX_WBITS) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


ENCODERS = {
    "gzip": gzip.compress,
    "deflate": deflate,  # zlib format, RFC 1950 (RFC 9110 §8.4.1.2)
    "deflate-bare": lambda data: deflate(data, -zlib.MAX_WBITS),  # what some clients send
}


def decode(body: bytes, header: str, max_bytes: int = 10**9, chunk: int = 65536) -> bytes:
    """Run :func:`decoded_body` over ``body`` cut into ``chunk``-byte pieces."""

    async def source() -> AsyncIterator[bytes]:
        for start in range(0, len(body), chunk):
            yield body[start : start + chunk]

    async def collect() -> bytes:
        stream = decoded_body(source(), content_codings(header), max_bytes)
        return b"".join([piece async for piece in stream])

    return asyncio.run(collect())


# --- the header ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "codings"),
    [
        (None, []),
        ("", []),
        ("identity", []),
        ("gzip", ["gzip"]),
        ("GZip", ["gzip"]),
        ("x-gzip", ["gzip"]),
        ("deflate", ["deflate"]),
        ("deflate, gzip", ["deflate", "gzip"]),
        ("identity,gzip", ["gzip"]),
    ],
)
def test_content_codings_in_the_order_applied(header: str | None, codings: list[str]) -> None:
    assert content_codings(header) == codings


@pytest.mark.parametrize("header", ["br", "compress", "zstd", "gzip, br", "gzip;q=1", "*"])
def test_other_codings_are_unsupported(header: str) -> None:
    with pytest.raises(UnsupportedContentCoding):
        content_codings(header)


# --- decoding --------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 4096, 10**7])
@pytest.mark.parametrize("encoder", ENCODERS)
def test_decoding_restores_the_bytes_whatever_the_chunking(encoder: str, chunk: int) -> None:
    body = ENCODERS[encoder](PAYLOAD)
    header = encoder.removesuffix("-bare")

    assert decode(body, header, chunk=chunk) == PAYLOAD


def test_identity_passes_the_body_through() -> None:
    assert decode(PAYLOAD, "identity", chunk=1000) == PAYLOAD


def test_several_gzip_members_are_one_body() -> None:
    body = gzip.compress(PAYLOAD[:1000]) + gzip.compress(PAYLOAD[1000:])

    assert decode(body, "gzip", chunk=333) == PAYLOAD


def test_stacked_codings_are_undone_last_first() -> None:
    body = gzip.compress(deflate(PAYLOAD))

    assert decode(body, "deflate, gzip") == PAYLOAD


def test_one_chunk_inflating_far_yields_bounded_pieces() -> None:
    inflater = Inflater("gzip")
    pieces = [len(piece) for piece in inflater.feed(gzip.compress(bytes(20 * STEP_BYTES + 5)))]
    inflater.finish()

    assert sum(pieces) == 20 * STEP_BYTES + 5
    assert max(pieces) == STEP_BYTES


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("size", [STEP_BYTES + 100, 3 * STEP_BYTES + 7])
def test_output_still_held_by_zlib_when_the_input_ends_is_drained(encoder: str, size: int) -> None:
    # The last codes of a run can decode to more than one step after every input byte has
    # been consumed (a bare deflate stream has no trailer left to feed).
    body = ENCODERS[encoder](bytes(size))

    assert decode(body, encoder.removesuffix("-bare"), chunk=len(body)) == bytes(size)


# --- corrupt streams -------------------------------------------------------------------------


def flipped(body: bytes, at: int) -> bytes:
    return body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1 :]


CORRUPT = {
    "not-gzip": ("gzip", PAYLOAD[:5000]),
    "empty-gzip": ("gzip", b""),
    "truncated-gzip": ("gzip", gzip.compress(PAYLOAD)[:-100]),
    "flipped-header": ("gzip", flipped(gzip.compress(PAYLOAD), 0)),
    "flipped-crc": ("gzip", flipped(gzip.compress(PAYLOAD), -6)),
    "garbage-after-gzip": ("gzip", gzip.compress(PAYLOAD) + b"garbage"),
    "truncated-deflate": ("deflate", deflate(PAYLOAD)[:-10]),
    "garbage-after-deflate": ("deflate", deflate(PAYLOAD) + b"garbage"),
    "empty-deflate": ("deflate", b""),
    "one-byte-deflate": ("deflate", b"x"),
    "gzip-inside-deflate": ("deflate, gzip", gzip.compress(PAYLOAD)),
}


@pytest.mark.parametrize(("header", "body"), CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_streams_are_refused(header: str, body: bytes) -> None:
    with pytest.raises(CorruptContent):
        decode(body, header, chunk=4096)


# --- the size cap ----------------------------------------------------------------------------


def bomb(size: int) -> bytes:
    """``size`` zero bytes, gzip-compressed about a thousandfold."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    chunks = [compressor.compress(block) for _ in range(size // len(block))]
    return b"".join([*chunks, compressor.flush()])


@pytest.mark.parametrize("header", ["gzip", "gzip, gzip"])
def test_decoded_size_is_capped_not_the_compressed_one(header: str) -> None:
    body = bomb(256 * 1024 * 1024)
    if header == "gzip, gzip":
        body = gzip.compress(body)
    assert len(body) < 1024 * 1024

    with pytest.raises(ContentTooLarge):
        decode(body, header, max_bytes=4 * 1024 * 1024)


def test_a_body_of_exactly_the_cap_passes_and_one_byte_more_does_not() -> None:
    assert decode(gzip.compress(PAYLOAD), "gzip", max_bytes=len(PAYLOAD)) == PAYLOAD
    with pytest.raises(ContentTooLarge):
        decode(gzip.compress(PAYLOAD), "gzip", max_bytes=len(PAYLOAD) - 1)
    with pytest.raises(ContentTooLarge):
        decode(PAYLOAD, "identity", max_bytes=len(PAYLOAD) - 1)
