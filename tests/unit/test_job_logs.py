"""The end of a failed job's log, as the Snakefile's ``onerror`` prints it."""

from __future__ import annotations

from pastflow.job_logs import log_tail, log_tails


def test_the_last_lines_of_each_log_under_its_name(tmp_path):
    long = tmp_path / "ingest.log"
    long.write_text("".join(f"line {i}\n" for i in range(1, 101)))
    binary = tmp_path / "bin.log"
    binary.write_bytes(b"ok\n\xff\xfe broken\n")
    (tmp_path / "empty.log").write_text("")
    assert log_tail(long) == [f"line {i}" for i in range(81, 101)]
    assert log_tail(long, lines=2) == ["line 99", "line 100"]
    assert log_tail(binary) == ["ok", "\ufffd\ufffd broken"]
    assert log_tail(tmp_path / "empty.log") == ["(empty log)"]
    assert log_tail(tmp_path / "absent.log") == ["(no log: No such file or directory)"]
    text = log_tails([long, tmp_path / "absent.log"], lines=2)
    assert text.splitlines() == [
        f"pastflow: last 2 lines of the failed job's log {long}:", "    line 99", "    line 100",
        f"pastflow: last 2 lines of the failed job's log {tmp_path / 'absent.log'}:",
        "    (no log: No such file or directory)"]
