"""The plugin's reader of a supervisor's event stream (pytest_supervisor.events)."""

import json

from pytest_supervisor.events import EventStream


def test_events_are_there_as_soon_as_they_are_written(tmp_path):
    """An event written before a control command's reply is there once the reply is: reading
    `events` does not wait for the reader thread's next look at the file."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"")
    stream = EventStream(path, writer_alive=lambda: True)
    stream.start()
    try:
        for count in range(1, 51):
            with open(path, "ab") as out:
                out.write(json.dumps({"event": "spawned", "count": count}).encode() + b"\n")
            assert [e["count"] for e in stream.events] == list(range(1, count + 1))
        with open(path, "ab") as out:
            out.write(b'{"event": "stopp')  # a line still being written is not an event yet
        assert len(stream.events) == 50
        with open(path, "ab") as out:
            out.write(b'ed"}\n')
        assert stream.events[-1] == {"event": "stopped"} and not stream.malformed
    finally:
        stream.close()
