import io
import json
import threading
from pathlib import Path

import pytest

from adapter.core.errors import ConfigError, SinkError
from adapter.core.ports import StreamUpdate
from adapter.core.rows import row_from_wire
from adapter.runtime.sinks import JsonLinesSink, load_handler, update_to_json


def _update(token: int, source: str = "kafka") -> StreamUpdate:
    row = row_from_wire("typing", ["!r:test", ["@a:test"]])
    return StreamUpdate("typing", "master", token, (row,), source)  # type: ignore[arg-type]


def test_update_is_written_as_one_json_line_with_wire_rows() -> None:
    out = io.StringIO()
    sink = JsonLinesSink(out)
    sink(_update(3, "backfill"))
    assert json.loads(out.getvalue()) == {
        "stream": "typing",
        "writer": "master",
        "token": 3,
        "source": "backfill",
        "rows": [["!r:test", ["@a:test"]]],
    }
    assert update_to_json(_update(4))["token"] == 4


def test_lines_from_many_threads_never_interleave() -> None:
    out = io.StringIO()
    sink = JsonLinesSink(out)

    def write(n: int) -> None:
        for i in range(200):
            sink(_update(n * 1000 + i))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().splitlines()
    assert len(lines) == 800
    assert all(json.loads(line)["stream"] == "typing" for line in lines)
    assert sink.updates == 800


def test_load_handler_imports_module_function() -> None:
    handler: object = load_handler("json:dumps")
    assert handler is json.dumps


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("json", "module:function"),
        ("no_such_module_xyz:f", "cannot import"),
        ("json:no_such_attr", "no attribute"),
        ("json:__doc__", "not callable"),
    ],
)
def test_load_handler_rejects_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_handler(spec)


def _event(token: int, writer: str = "master", source: str = "kafka") -> StreamUpdate:
    row = row_from_wire("typing", ["!r:test", ["@a:test"]])
    return StreamUpdate("events", writer, token, (row,), source)  # type: ignore[arg-type]


def test_a_reopened_file_drops_a_cut_line_and_skips_what_it_holds(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.jsonl"
    sink = JsonLinesSink.open(path)
    for token in (1, 2, 3):
        sink(_event(token))
    sink(_event(7, writer='w\\"1'))  # a name with escapes: the slow parse
    sink.close()
    with path.open("ab") as f:
        f.write(b'{"stream":"events","writer":"master","token":4,"sou')  # a kill
    again = JsonLinesSink.open(path)
    assert not path.read_bytes().endswith(b"sou"), "the cut line is gone"
    # Re-delivered after a crash (from Kafka or the backfill), then new updates.
    for token in (2, 3, 4, 5):
        again(_event(token, source="backfill"))
    again(_event(7, writer='w\\"1'))
    again(_event(8, writer='w\\"1'))
    again.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    keys = [(x["writer"], x["token"]) for x in lines]
    assert keys == [
        ("master", 1),
        ("master", 2),
        ("master", 3),
        ('w\\"1', 7),
        ("master", 4),
        ("master", 5),
        ('w\\"1', 8),
    ]
    assert again.skipped == 3


def test_a_file_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my notes\n")
    with pytest.raises(ConfigError, match="line 1 is not a synkafka JSON line"):
        JsonLinesSink.open(path)
    assert path.read_text() == "my notes\n"


@pytest.mark.parametrize(
    ("name", "problem"),
    [("missing/x.jsonl", "No such file or directory"), (".", "Is a directory")],
)
def test_a_bad_output_path_is_a_config_error_naming_it(
    tmp_path: Path, name: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        JsonLinesSink.open(tmp_path / name)
    assert str(tmp_path) in str(info.value)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_write_failure_is_a_sink_error_and_nothing_is_written_after_it() -> None:
    sink = JsonLinesSink.open(Path("/dev/full"))
    try:
        with pytest.raises(SinkError, match="cannot write to /dev/full: No space"):
            sink(_event(1))
        with pytest.raises(SinkError):
            sink(_event(2))
        assert sink.updates == 0
        sink.sync()  # not a regular file: nothing to sync
    finally:
        sink.close()
