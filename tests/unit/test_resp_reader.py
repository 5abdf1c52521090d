"""The subscriber's RESP reader: hiredis and the Python fallback agree."""

from __future__ import annotations

import pytest

from adapter.io.redis.subscriber import RespError, _RespReader

STREAM = (
    b"*3\r\n$9\r\nsubscribe\r\n$4\r\nhs.a\r\n:1\r\n"
    b"*3\r\n$7\r\nmessage\r\n$4\r\nhs.a\r\n$28\r\nPOSITION events master 10 12\r\n"
    b"*3\r\n$7\r\nmessage\r\n$4\r\nhs.a\r\n$0\r\n\r\n"
    b"-ERR wrong number of arguments\r\n"
    b"$-1\r\n"
)


def _frames(reader: _RespReader, chunks: list[bytes]) -> list[object]:
    out: list[object] = []
    for chunk in chunks:
        reader.feed(chunk)
        out.extend(reader.messages())
    return out


@pytest.mark.parametrize("use_hiredis", [True, False])
@pytest.mark.parametrize("step", [1, 3, 7, len(STREAM)])
def test_frames_split_anywhere_parse_the_same(use_hiredis: bool, step: int) -> None:
    chunks = [STREAM[i : i + step] for i in range(0, len(STREAM), step)]
    frames = _frames(_RespReader(use_hiredis=use_hiredis), chunks)
    assert frames[:3] == [
        [b"subscribe", b"hs.a", 1],
        [b"message", b"hs.a", b"POSITION events master 10 12"],
        [b"message", b"hs.a", b""],
    ]
    assert isinstance(frames[3], RespError)
    assert "wrong number" in str(frames[3])
    assert frames[4] is None
    assert len(frames) == 5


def test_the_fast_reader_is_in_use() -> None:
    # hiredis is a dependency: without it the bridge is slower, not wrong.
    assert _RespReader()._fast is not None


@pytest.mark.parametrize("use_hiredis", [True, False])
def test_garbage_is_a_resp_error(use_hiredis: bool) -> None:
    reader = _RespReader(use_hiredis=use_hiredis)
    reader.feed(b"?what\r\n")
    with pytest.raises(RespError):
        list(reader.messages())
