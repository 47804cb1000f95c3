"""Long certifications (N = 100,000 takes minutes): jobs beside the inference protocol.

``POST /v1/jobs`` takes an inference request and answers at once with a job id (unguessable: the id is
the only key to the result); ``GET /v1/jobs/{id}`` reports ``queued`` / ``running`` with the draws so
far (and, for ``certify_anytime``, each image's anytime-valid certificate so far: ``anytime``, a list of
``{label, radius, p_a_lower, n}`` or null before the image's selection is complete), or the final
``succeeded`` (with the inference response as ``result``), ``failed`` or ``cancelled``; ``DELETE /v1/jobs/{id}`` cancels a job and forgets it. A final result is kept until it
is fetched once or until ``ttl_s`` after it finished. The store lives on the event loop; the engine
loop's callbacks reach it through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import enum
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from densepure.serve.loop import EngineLoop, FailKind, Outcome, WorkFailed, WorkResult


class JobStatus(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(eq=False)
class Job:
    id: str
    work_id: str
    images: int
    render: Callable[[WorkResult], dict]  # the inference response body of a result
    created: float = field(default_factory=time.time)
    finished: float | None = None  # monotonic
    status: JobStatus = JobStatus.QUEUED
    result: dict | None = None
    error: str | None = None


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


class JobStore:
    """The jobs of one server: at most ``max_jobs`` retained, final ones kept ``ttl_s`` seconds unfetched."""

    def __init__(self, loop: EngineLoop, max_jobs: int, ttl_s: float):
        self.loop, self.max_jobs, self.ttl_s = loop, int(max_jobs), float(ttl_s)
        self._jobs: dict[str, Job] = {}

    def __len__(self) -> int:
        self.purge()
        return len(self._jobs)

    def new_id(self) -> str:
        return secrets.token_urlsafe(18)

    def add(self, job: Job) -> None:
        self._jobs[job.id] = job

    def discard(self, job_id: str) -> None:
        """Forget a job whose work was never queued."""
        self._jobs.pop(job_id, None)

    def finish(self, job_id: str, outcome: Outcome) -> None:
        """Record a job's outcome (on the event loop)."""
        job = self._jobs.get(job_id)
        if job is None or job.finished is not None:
            return
        job.finished = time.monotonic()
        if isinstance(outcome, WorkResult):
            job.status, job.result = JobStatus.SUCCEEDED, job.render(outcome)
        elif isinstance(outcome, WorkFailed) and outcome.kind is FailKind.CANCELLED:
            job.status, job.error = JobStatus.CANCELLED, outcome.message
        else:
            job.status, job.error = JobStatus.FAILED, outcome.message

    def purge(self) -> None:
        now = time.monotonic()
        for job_id in [j.id for j in self._jobs.values() if j.finished is not None and now - j.finished > self.ttl_s]:
            del self._jobs[job_id]

    def peek(self, job_id: str) -> dict:
        """A new job's state (nothing is handed over)."""
        job = self._jobs[job_id]
        return {"id": job.id, "status": job.status.value, "created": _iso(job.created), "images": job.images}

    def view(self, job_id: str) -> dict | None:
        """The job's state; a final one is handed over (and forgotten); None if unknown, fetched or expired."""
        self.purge()
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.finished is None:
            return self.progress_view(job_id)
        out = self.peek(job_id)
        del self._jobs[job_id]
        if job.result is not None:
            out["result"] = job.result
        if job.error is not None:
            out["error"] = job.error
        return out

    def delete(self, job_id: str) -> dict | None:
        """Cancel (if still running) and forget a job; None if unknown."""
        self.purge()
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        if job.finished is None:
            self.loop.cancel(job.work_id)
            return {"id": job.id, "status": JobStatus.CANCELLED.value}
        return {"id": job.id, "status": job.status.value, "deleted": True}

    def cancel_all(self) -> None:
        for job in self._jobs.values():
            if job.finished is None:
                self.loop.cancel(job.work_id)

    def running(self) -> list[str]:
        """The jobs not finished yet."""
        return [job.id for job in self._jobs.values() if job.finished is None]

    def work_of(self, job_id: str) -> str:
        return self._jobs[job_id].work_id

    def progress_view(self, job_id: str) -> dict:
        """A running job's state and draws so far, and for ``certify_anytime`` each image's anytime
        certificate so far (nothing is handed over)."""
        job = self._jobs[job_id]
        out = self.peek(job_id)
        progress = self.loop.progress(job.work_id)
        if progress is not None:
            admitted, draws = progress
            job.status = JobStatus.RUNNING if admitted else JobStatus.QUEUED
            out.update(status=job.status.value, draws=draws)
        anytime = self.loop.anytime(job.work_id)
        if anytime is not None:  # certify_anytime: the radius so far, per image, valid if the job stops now
            out["anytime"] = anytime
        return out

    # -- the server's lifecycle (a Ray replica's store shares its jobs: densepure.serve.ray_jobs) --------
    async def start(self) -> None:
        pass

    async def close(self, wait_s: float) -> None:
        """At shutdown: a server's jobs are cancelled (``wait_s`` is for a Ray replica's drain)."""
        self.cancel_all()

    def count(self) -> int:
        return len(self)
