"""Ray jobs: running a ``ray-interactive`` command on a cluster (``ray job submit``)."""

from __future__ import annotations

import time

from ray.job_submission import JobStatus, JobSubmissionClient


class JobServer:
    """A cluster's job server (its dashboard address, ``http://host:8265``)."""

    def __init__(self, address: str) -> None:
        """Raises ``ConnectionError`` naming the address if nothing answers there."""
        self.address = address
        try:
            self._client = JobSubmissionClient(address)
        except Exception as e:  # noqa: BLE001 - Ray raises several kinds here; say which server
            raise ConnectionError(f"cannot reach a Ray job server at {address}: {str(e).splitlines()[0]}") from None

    def submit(self, entrypoint: str, working_dir: str | None, job_id: str | None = None,
               env_vars: dict[str, str] | None = None) -> str:
        """Start ``entrypoint`` with ``working_dir`` (None: none) uploaded and ``env_vars``
        set for it; the job's id."""
        runtime_env: dict[str, object] = {"working_dir": working_dir} if working_dir else {}
        if env_vars:
            runtime_env["env_vars"] = env_vars
        return self._client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id)

    def wait(self, job: str, poll_s: float = 1.0) -> tuple[bool, str, str]:
        """Until the job ends: ``(succeeded, final status, the last 4000 characters of its logs)``."""
        status = self._client.get_job_status(job)
        while not status.is_terminal():
            time.sleep(poll_s)
            status = self._client.get_job_status(job)
        return status == JobStatus.SUCCEEDED, status.value, self._client.get_job_logs(job)[-4000:]
