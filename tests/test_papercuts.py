"""Operator papercuts (issue 13): clear start-up refusals, an audit trail, the seeds' leftovers.

Each test drives a real dlqd process (or the real `dlqctl`) against the real
catalog upstream and proves one item of the issue the way an operator meets it.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mutagen.flac import FLAC
from prometheus_client.parser import text_string_to_metric_families

from dlqd.demo import audio
from dlqd.demo.catalog import (
    ENCRYPTED_TRACK_ID,
    SINGLE_ALBUM_ID,
    SINGLE_TRACK_ID,
    UNKNOWN_ID,
    Catalog,
    CatalogServer,
)
from dlqd.naming import TEMPLATE_FIELDS
from tests.conftest import DaemonFactory
from tests.support import (
    DaemonProcess,
    assert_unharmed,
    dlqctl,
    held_daemon,
    outside_snapshot,
)


def log_lines(daemon: DaemonProcess) -> list[dict[str, Any]]:
    """The daemon's JSON log lines (its stderr also holds the refusal text, not JSON)."""
    return [json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")]


def exit_code(daemon: DaemonProcess) -> int:
    assert daemon.proc is not None
    return daemon.proc.wait(timeout=20)


# --- start-up refusals ------------------------------------------------------------------------


def test_a_state_dir_that_is_a_regular_file_refuses_start_with_a_clear_message(
    make_daemon: DaemonFactory,
) -> None:
    daemon = make_daemon()
    daemon.state_dir.write_bytes(b"someone's notes")

    daemon.start(wait=False)

    assert exit_code(daemon) == 1
    logs = daemon.logs()
    assert f"state directory {daemon.state_dir} is a regular file, not a directory" in logs
    assert "--state-dir" in logs  # says what to do
    assert "Traceback" not in logs
    assert daemon.state_dir.read_bytes() == b"someone's notes"


def test_a_library_that_is_a_regular_file_is_named_as_such(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon()
    daemon.library.rmdir()
    daemon.library.write_bytes(b"not a folder")

    daemon.start(wait=False)

    assert exit_code(daemon) == 1
    logs = daemon.logs()
    assert f"library directory {daemon.library} is a regular file, not a directory" in logs
    assert "does not exist" not in logs
    assert not daemon.state_dir.exists()  # refused before the state dir was made


def test_a_taken_socket_refuses_before_the_state_dir_is_touched(
    make_daemon: DaemonFactory,
) -> None:
    first = held_daemon(make_daemon, "first")
    second = make_daemon("second", settings={"daemon": {"socket": str(first.socket)}})

    second.start(wait=False)

    assert exit_code(second) == 1
    assert f"another daemon answers on {first.socket}" in second.logs()
    assert log_lines(second) == []  # no "journal recovered" or anything else first
    assert not second.state_dir.exists()  # not created, locked or read
    assert first.call("health")["ok"] is True


def test_a_second_daemon_on_a_locked_state_dir_leaves_no_socket_behind(
    make_daemon: DaemonFactory,
) -> None:
    first = held_daemon(make_daemon, "first")
    second = make_daemon("second", settings={"daemon": {"state_dir": str(first.state_dir)}})

    second.start(wait=False)

    assert exit_code(second) == 1
    assert f"already using state dir {first.state_dir}" in second.logs()
    assert not Path(second.socket).exists()  # it bound its socket first, and removed it
    assert first.call("health")["ok"] is True


# --- a job that fails before its tracks run, and retrying it -----------------------------------


def test_a_track_job_whose_track_does_not_exist_fails_its_track_row_too(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream)
    daemon.start()
    job_id = daemon.submit("track", UNKNOWN_ID)

    job = daemon.wait_job(job_id)

    assert (job["status"], job["error"]["code"]) == ("failed", "UPSTREAM_NOT_FOUND")
    [track] = job["tracks"]
    assert (track["status"], track["error"]) == ("failed", job["error"])
    assert daemon.stop() == 0
    daemon.start()
    assert daemon.job(job_id)["tracks"] == [track]  # journaled, not patched up in memory


def test_retry_of_a_job_that_failed_for_good_warns_it_will_fail_again(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream)
    daemon.start()
    missing = daemon.submit("track", UNKNOWN_ID)
    encrypted = daemon.submit("track", ENCRYPTED_TRACK_ID)
    upstream.inject("media", "status", None, status=503, track_id=SINGLE_TRACK_ID)
    passing_fault = daemon.submit("track", SINGLE_TRACK_ID)
    for job_id in (missing, encrypted, passing_fault):
        daemon.wait_job(job_id)
    upstream.clear_faults()
    daemon.call("pause")  # the retried jobs stay queued while we read the answers

    code, out, err = dlqctl(daemon.socket, "retry", missing)
    assert (code, out.strip()) == (0, f"job {missing}: queued")
    assert err.startswith("warning: it failed on the upstream's final answer (UPSTREAM_NOT_FOUND")
    assert "will most likely fail the same way" in err

    code, out, _ = dlqctl(daemon.socket, "--json", "retry", encrypted)
    assert code == 0
    warning = json.loads(out)["warning"]
    assert "UNSUPPORTED_FORMAT: encrypted stream" in warning

    code, out, err = dlqctl(daemon.socket, "retry", passing_fault)
    assert (code, out.strip(), err) == (0, f"job {passing_fault}: queued", "")
    daemon.call("resume")
    assert daemon.wait_job(passing_fault)["status"] == "completed"


# --- enums in any case ------------------------------------------------------------------------


def test_every_enum_is_accepted_in_any_case_and_listed_in_one(make_daemon: DaemonFactory) -> None:
    daemon = held_daemon(make_daemon)

    code, out, err = dlqctl(
        daemon.socket, "--json", "add", "Track", "5", "--quality", "lossless", "--priority", "HIGH"
    )
    assert code == 0, err
    job = daemon.job(json.loads(out)["id"])
    assert (job["type"], job["quality"], job["priority"]) == ("track", "LOSSLESS", "high")
    code, out, _ = dlqctl(daemon.socket, "--json", "ls", "--status", "QUEUED")
    assert (code, [j["id"] for j in json.loads(out)]) == (0, [job["id"]])
    # The protocol reads them the same way, for any client.
    raw = daemon.call("submit", type="ALBUM", target_id=6, quality="Hi_Res_Lossless")
    album = daemon.job(raw["id"])
    assert (album["type"], album["quality"], album["priority"]) == (
        "album",
        "HI_RES_LOSSLESS",
        "normal",
    )
    refusal = daemon.refused("submit", type="album", target_id=7, quality="MEDIUM")
    assert (
        "quality must be one of low, high, lossless, hi_res_lossless (any case)" in refusal.message
    )

    code, out, _ = dlqctl(daemon.socket, "add", "--help")
    assert code == 0
    assert "{low,high,lossless,hi_res_lossless}" in out and "{high,normal,low}" in out
    code, _, err = dlqctl(daemon.socket, "add", "track", "5", "--priority", "urgent")
    assert code == 2
    assert "'urgent' is not one of high, normal, low" in err


# --- a naming template with an unknown field ----------------------------------------------------


def test_an_unknown_naming_field_is_named_with_each_known_field_listed_once(
    make_daemon: DaemonFactory,
) -> None:
    daemon = make_daemon(settings={"files": {"naming": "{artst}/{album}/{title}"}})

    daemon.start(wait=False)

    assert exit_code(daemon) == 2
    [message] = [line for line in daemon.logs().splitlines() if line.startswith("dlqd: ")]
    assert message.startswith(
        "dlqd: config error: [files] naming: unknown field {artst} (did you mean {artist}?); "
        "the fields are {album}, {album_artist}, {artist}, "
    )
    assert message.endswith(f'got "{{artst}}/{{album}}/{{title}}" (from {daemon.config_path})')
    listed = message.split("the fields are ")[1].split("; got ")[0]
    assert listed == ", ".join("{" + name + "}" for name in sorted(TEMPLATE_FIELDS))
    assert message.count("the fields are") == 1 and "known:" not in message  # listed once


# --- dlqctl --json metrics --------------------------------------------------------------------


def test_dlqctl_json_metrics_gives_the_parsed_families(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream)
    daemon.start()
    assert daemon.wait_job(daemon.submit("track", SINGLE_TRACK_ID))["status"] == "completed"

    code, out, err = dlqctl(daemon.socket, "--json", "metrics")

    assert code == 0, err
    families = {family["name"]: family for family in json.loads(out)}
    finished = families["dlqd_jobs_finished"]
    assert (finished["type"], finished["help"]) == (
        "counter",
        "Jobs that reached a final status, by status.",
    )
    assert {
        "name": "dlqd_jobs_finished_total",
        "labels": {"status": "completed"},
        "value": 1.0,
    } in finished["samples"]
    assert families["dlqd_track_download_seconds"]["type"] == "histogram"
    # The same families, names and labels as the text form, as Prometheus parses it.
    code, text, _ = dlqctl(daemon.socket, "metrics")
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == set(parsed)
    for name, family in parsed.items():
        assert families[name]["type"] == family.type
        assert [(s["name"], s["labels"]) for s in families[name]["samples"]] == [
            (s.name, s.labels) for s in family.samples
        ]


# --- a cover that fails once ------------------------------------------------------------------


def test_a_cover_that_fails_once_is_retried_and_embedded(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream)
    daemon.start()
    upstream.inject("cover", "status", 1, status=503, album_id=SINGLE_ALBUM_ID)

    job = daemon.wait_job(daemon.submit("track", SINGLE_TRACK_ID))

    assert job["status"] == "completed", job
    assert job["tracks"][0]["attempts"] == 1  # the cover's retry is not the track's
    assert len(upstream.requests_for("cover", album_id=SINGLE_ALBUM_ID)) == 2
    path = daemon.library / job["tracks"][0]["path"]
    [picture] = FLAC(path).pictures
    expected = audio.cover_jpeg()  # what the catalog serves for every album
    assert picture.data == expected
    assert (path.parent / "cover.jpg").read_bytes() == expected


# --- warnings when the queue grows long -------------------------------------------------------


def backlog_warnings(daemon: DaemonProcess) -> list[tuple[int, int]]:
    """(threshold, active jobs) of each 'many active jobs' warning logged so far."""
    return [
        (line["threshold"], line["active_jobs"])
        for line in log_lines(daemon)
        if line["event"].startswith("many active jobs") and line["level"] == "warning"
    ]


def test_passing_each_active_job_threshold_warns_once_and_health_notes_it(
    make_daemon: DaemonFactory,
) -> None:
    daemon = held_daemon(make_daemon, limits={"warn_active_jobs": [3, 5]})
    jobs = [daemon.submit("track", target) for target in (1, 2)]
    assert backlog_warnings(daemon) == []
    assert daemon.call("health")["notes"] == []

    jobs += [daemon.submit("track", target) for target in (3, 4)]
    assert backlog_warnings(daemon) == [(3, 3)]  # once, not again at 4
    health = daemon.call("health")
    assert health["ok"] is True and health["problems"] == []  # a note, not a failure
    assert health["notes"] == [
        "active_jobs: 4 active jobs, at or above the warning threshold of 3 "
        "(limits.warn_active_jobs)"
    ]
    assert health["checks"]["active_jobs"]["warn_at"] == [3, 5]
    code, out, _ = dlqctl(daemon.socket, "health")
    assert code == 0
    assert "  note: active_jobs: 4 active jobs, at or above" in out

    jobs.append(daemon.submit("track", 5))
    assert backlog_warnings(daemon) == [(3, 3), (5, 5)]

    for job_id in jobs[2:]:  # down to 2: under 90% of 3, so both thresholds re-arm
        daemon.call("cancel", id=job_id)
    assert daemon.call("health")["notes"] == []
    daemon.submit("track", 6)
    assert backlog_warnings(daemon) == [(3, 3), (5, 5), (3, 3)]

    assert daemon.stop() == 0
    daemon.start()  # a queue recovered at 3 warns at start-up
    assert backlog_warnings(daemon) == [(3, 3), (5, 5), (3, 3), (3, 3)]


# --- the audit trail of a crash ---------------------------------------------------------------


def test_each_job_requeued_after_a_crash_gets_its_own_log_line(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream, settings={"worker": {"max_concurrent": 1}})
    daemon.start()
    upstream.inject("media", "stall", 1, track_id=SINGLE_TRACK_ID)
    running = daemon.submit("track", SINGLE_TRACK_ID)
    waiting = daemon.submit("album", SINGLE_ALBUM_ID, priority="low")
    daemon.wait_job(running, ["processing"])
    assert daemon.job(waiting)["status"] == "queued"

    daemon.kill()
    daemon.start()

    recovered = [
        line
        for line in log_lines(daemon)
        if line["event"] == "job recovered from crash: queued again"
    ]
    assert [line["job_id"] for line in recovered] == [running]  # not the job that was only queued
    assert recovered[0]["level"] == "warning"
    assert daemon.wait_job(running)["status"] == "completed"
    assert daemon.stop() == 0
    daemon.start()  # a clean stop drains: nothing to recover from
    assert (
        len([line for line in log_lines(daemon) if line["event"].startswith("job recovered")]) == 1
    )


# --- how long jobs take -----------------------------------------------------------------------


def job_seconds(daemon: DaemonProcess) -> dict[str, tuple[float, float]]:
    """Per status: (count, sum) of dlqd_job_duration_seconds, from `dlqctl metrics`."""
    code, text, err = dlqctl(daemon.socket, "metrics")
    assert code == 0, err
    [family] = [
        f for f in text_string_to_metric_families(text) if f.name == "dlqd_job_duration_seconds"
    ]
    assert family.type == "histogram"
    samples = {(s.name, s.labels["status"]): s.value for s in family.samples}
    statuses = {status for _, status in samples}
    return {
        status: (
            samples[("dlqd_job_duration_seconds_count", status)],
            samples[("dlqd_job_duration_seconds_sum", status)],
        )
        for status in statuses
    }


def test_each_finished_job_is_timed_by_status(
    make_daemon: DaemonFactory, upstream: CatalogServer
) -> None:
    daemon = make_daemon(upstream=upstream)
    daemon.start()
    daemon.wait_job(daemon.submit("track", SINGLE_TRACK_ID))
    daemon.wait_job(daemon.submit("track", UNKNOWN_ID))
    daemon.call("pause")
    daemon.call("cancel", id=daemon.submit("album", SINGLE_ALBUM_ID))

    seconds = job_seconds(daemon)

    assert set(seconds) == {"completed", "partial", "failed", "cancelled"}
    assert [seconds[s][0] for s in ("completed", "partial", "failed", "cancelled")] == [1, 0, 1, 1]
    assert seconds["completed"][1] > 0  # it took some time to download

    queued = daemon.submit("album", SINGLE_ALBUM_ID)
    assert daemon.stop() == 0
    daemon.start()  # a job queued before the restart is timed from its submit
    daemon.call("resume")
    daemon.wait_job(queued)
    assert job_seconds(daemon)["completed"][0] == 1


# --- a bug inside one track -------------------------------------------------------------------


def daemon_with_a_buggy_track(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> tuple[DaemonProcess, int, int]:
    """A daemon whose first track of a new two-track album hits a bug (a debug hook).

    Returns the daemon, the album and its buggy track's id.
    """
    album = catalog.add_album(2, seconds=0.3)
    buggy_track = album * 1000 + 1
    daemon = make_daemon(
        upstream=upstream,
        env={"DLQD_DEBUG_HOOKS": "1", "DLQD_DEBUG_FAIL_TRACK": str(buggy_track)},
    )
    daemon.start()
    return daemon, album, buggy_track


def test_a_bug_inside_one_track_fails_it_with_internal_error_and_the_daemon_goes_on(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon, album, buggy_track = daemon_with_a_buggy_track(make_daemon, upstream, catalog)
    before = outside_snapshot(daemon)

    album_job = daemon.submit("album", album)
    innocent = daemon.submit("track", SINGLE_TRACK_ID)
    job = daemon.wait_job(album_job)

    assert job["status"] == "partial", job
    buggy, other = job["tracks"]
    assert buggy["track_id"] == buggy_track
    assert (buggy["status"], buggy["error"]["code"]) == ("failed", "INTERNAL_ERROR")
    assert "InjectedFault" in buggy["error"]["message"]
    assert buggy["attempts"] == 1  # a bug is not retried
    assert other["status"] == "completed"
    daemon.wait_job(innocent)
    assert daemon.call("stats")["worker"]["active_tracks"] == 0  # its slot came back
    assert_unharmed(daemon, innocent, before, hostile_job=album_job)


def test_json_log_lines_carry_iso_timestamps_and_the_stack_of_an_error(
    make_daemon: DaemonFactory, upstream: CatalogServer, catalog: Catalog
) -> None:
    daemon, album, buggy_track = daemon_with_a_buggy_track(make_daemon, upstream, catalog)
    album_job = daemon.submit("album", album)
    daemon.wait_job(album_job)

    lines = log_lines(daemon)

    assert lines and all(set(line) >= {"timestamp", "level", "event"} for line in lines)
    for line in lines:  # ISO 8601 in UTC, e.g. 2026-01-31T12:00:00.123456Z
        stamp = datetime.fromisoformat(line["timestamp"])
        assert stamp.utcoffset() == timedelta(0), line["timestamp"]
    [error] = [line for line in lines if line["level"] == "error"]
    assert error["event"] == "internal error in track"
    assert (error["job_id"], error["track_id"]) == (album_job, buggy_track)
    stack = error["exception"]
    assert stack.startswith("Traceback (most recent call last):")
    assert "dlqd/fetch.py" in stack  # the frames the bug came through
    assert stack.rstrip().endswith(f"InjectedFault: debug hook: a bug in track {buggy_track}")
