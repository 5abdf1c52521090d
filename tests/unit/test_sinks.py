import io
import json
import threading

import pytest

from adapter.errors import ConfigError
from adapter.ports import StreamUpdate
from adapter.rows import row_from_wire
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
