"""Notifications: finished jobs announced through apprise URLs (`[notify]`).

Owns turning a finished job into a title and a one-paragraph body, and
delivering it to each configured URL (ntfy, Gotify, Pushover, email,
Discord, Matrix, a JSON webhook… — whatever apprise speaks), retried a few
times. Messages are built when the `finish` record is durable and sent by
one task, apprise's blocking calls in a worker thread, so a slow or dead
receiver never holds up the scheduler.

It must never change or fail a job: a message that cannot be delivered is
logged and counted (`dlqd_notify_failures_total`) and dropped. It never logs
a URL — they carry tokens and private topics — only its place in the list
and its scheme. Delivery is best effort: messages queued at a stop are lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from dlqd.model import Job, JobStatus, TrackStatus
from dlqd.summary import error_text, job_facts, job_name, printable

log = structlog.get_logger("dlqd.notify")

RETRY_DELAYS_S = (1.0, 4.0, 15.0)  # before the second, third and fourth try of one URL
MAX_QUEUED = 256  # messages waiting to be sent; past this a message is dropped (and counted)
MAX_FAILED_LISTED = 10  # failed tracks named in a body; the rest are counted
MAX_REASON_CHARS = 300  # of apprise's own account of a failure, in the log
# apprise's NotifyType values, by job status; apprise itself is imported only when
# URLs are configured (it costs ~70 ms of start-up that a daemon without them never pays).
_NOTIFY_TYPES = {
    JobStatus.COMPLETED: "success",
    JobStatus.PARTIAL: "warning",
    JobStatus.FAILED: "failure",
}


class UnusableUrl(ValueError):
    """A `[notify] urls` entry apprise does not understand; the message shows no secret."""


@dataclass(frozen=True)
class Target:
    """One configured URL, ready to send, and how the log names it (`#2 ntfy`)."""

    plugin: Any  # an apprise plugin instance (apprise has no public type for it)
    name: str


@dataclass(frozen=True)
class Message:
    job_id: str
    status: JobStatus
    title: str
    body: str


def notify_targets(urls: Sequence[str]) -> list[Target]:
    """Each URL as an apprise plugin; `UnusableUrl` names the first that is not one."""
    if not urls:
        return []
    import apprise

    targets = []
    for place, url in enumerate(urls, start=1):
        scheme = url.split("://", 1)[0]
        name = f"#{place} {printable(scheme, 20)}"
        plugin = apprise.Apprise.instantiate(url)
        if plugin is None:
            raise UnusableUrl(
                f"[notify] urls: entry {name}:// is not a URL apprise can send to "
                "(see https://github.com/caronc/apprise/wiki for the forms)"
            )
        targets.append(Target(plugin, name))
    return targets


def job_message(job: Job, children: Sequence[Job] = ()) -> Message:
    """`dlqd: Artist – Album completed` and one paragraph: tracks, size, time, what failed.

    An artist job's (`children`: its album jobs) counts its albums by outcome.
    """
    facts = job_facts(job, children)
    name = job_name(job)
    sentences = [f"{name}: {', '.join(facts)}." if facts else f"{name}."]
    failed = [t for t in job.tracks if t.status == TrackStatus.FAILED]
    if failed:
        listed = [
            f"{t.number:02d} {printable(t.title, 80) or t.track_id} "
            f"({(t.error or {}).get('code', 'UNKNOWN')})"
            for t in failed[:MAX_FAILED_LISTED]
        ]
        more = len(failed) - len(listed)
        sentences.append("Failed: " + ", ".join(listed) + (f" and {more} more." if more else "."))
    if job.status == JobStatus.FAILED and job.error:
        sentences.append(error_text(job.error) + ".")
    sentences.append(f"Job {job.id} ({job.type} {job.target_id}).")
    return Message(job.id, job.status, f"dlqd: {name} {job.status}", " ".join(sentences))


class Notifications:
    """Queues a message for each finished job whose status is in `on`, and sends them."""

    def __init__(
        self,
        targets: Sequence[Target],
        on: Sequence[str],
        jobs: Callable[[str], Job | None],
        *,
        on_failure: Callable[[], None] = lambda: None,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
    ) -> None:
        self.targets = tuple(targets)
        self.on = frozenset(on)
        self.jobs = jobs  # the live queue's jobs, read when a finish is durable
        self.on_failure = on_failure  # the metrics' dlqd_notify_failures_total
        self.retry_delays_s = tuple(retry_delays_s)
        self._send, self._receive = trio.open_memory_channel[Message](MAX_QUEUED)

    def observe_event(self, event: Mapping[str, Any]) -> None:
        """A durable journal event (`Store.on_commit`): queue a message for a wanted finish."""
        if event.get("e") != "finish" or event.get("status") not in self.on or not self.targets:
            return
        job = self.jobs(event["id"])
        if job is None:
            return
        try:
            children = [child for c in job.children if (child := self.jobs(c)) is not None]
            self._send.send_nowait(job_message(job, children))
        except trio.WouldBlock:
            self.on_failure()
            log.warning("notification dropped: too many waiting", job_id=job.id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for message in self._receive:
            for target in self.targets:
                await self._deliver(target, message)

    async def _deliver(self, target: Target, message: Message) -> None:
        reason = ""
        for delay in (0.0, *self.retry_delays_s):
            await trio.sleep(delay)
            sent, reason = await trio.to_thread.run_sync(
                _send_now, target, message, abandon_on_cancel=True
            )
            if sent:
                log.info("notification sent", job_id=message.job_id, target=target.name)
                return
        self.on_failure()
        log.error(
            "notification failed",
            job_id=message.job_id,
            target=target.name,
            tries=1 + len(self.retry_delays_s),
            reason=printable(reason, MAX_REASON_CHARS),
        )


def _send_now(target: Target, message: Message) -> tuple[bool, str]:
    """One try, in a worker thread: (delivered, apprise's warnings when not)."""
    import apprise  # loaded already: `notify_targets` made the plugin

    capture = apprise.LogCapture(level=logging.WARNING, fmt="%(message)s")  # type: ignore[no-untyped-call]
    with capture as captured:
        try:
            sent = bool(
                target.plugin.notify(
                    body=message.body,
                    title=message.title,
                    notify_type=apprise.NotifyType(_NOTIFY_TYPES.get(message.status, "info")),
                )
            )
        except Exception as exc:  # a plugin's bug must not end the sender
            return False, f"{type(exc).__name__}: {exc}"
    return sent, "" if sent else captured.getvalue().strip()
