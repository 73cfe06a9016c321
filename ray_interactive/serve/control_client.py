"""A client of a run's control API (:mod:`ray_interactive.serve.control_http`): the CLI's
way to a live run on this machine in a fraction of a second, with neither Ray nor torch.

    api = ApiClient.from_run_dir(Path("runs/r1"))   # None: the run serves no API there
    api.status()
    rec = api.submit({"kind": "update_optimizer", "params": {"lr": 3e-4}}, source="cli")

It answers the part of :class:`~ray_interactive.runtime.client.RunClient` the CLI uses.
``ApiUnavailable`` means nothing answered at the recorded address: the run has ended, or
its controller is being restarted (it records a new address when it is back).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a command is sent: status and log need no pydantic models
    from ray_interactive.core.commands import CommandRecord

#: Where a run directory records its control API (written by the controller, token mode 0600).
TOKEN_FILE, URL_FILE = "api_token", "api_url"
#: The longest a single wait request is held open by the server.
MAX_WAIT_S = 30.0


class ApiUnavailable(ConnectionError):
    """Nothing answers at the run's recorded API address."""


class ApiError(RuntimeError):
    """The API refused a request: its status and ``{"error"}`` text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status


class ApiClient:
    """Commands and queries for one run over its control API."""

    read_only = False

    def __init__(self, url: str, token: str, run: str, timeout: float = 10.0) -> None:
        self.url, self.run, self.timeout = url.rstrip("/"), run, timeout
        self._headers = {"Authorization": f"Bearer {token}"}

    @classmethod
    def from_run_dir(cls, run_dir: Path, timeout: float = 10.0) -> ApiClient | None:
        """The API a run directory records, if it records one (not yet checked to answer)."""
        try:
            url = (run_dir / URL_FILE).read_text().strip()
            token = (run_dir / TOKEN_FILE).read_text().strip()
            config = json.loads((run_dir / "config.json").read_text())
        except (OSError, ValueError):
            return None
        if not url.startswith("http") or not token or not isinstance(config, dict):
            return None
        return cls(url, token, str(config.get("name") or run_dir.name), timeout)

    def _call(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
              timeout: float | None = None) -> Any:
        params = {k: v for k, v in (query or {}).items() if v is not None}
        url = self.url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {**self._headers, **({"Content-Type": "application/json"} if data is not None else {})}
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", e.reason)
            except ValueError:
                message = e.reason
            raise ApiError(e.code, str(message)) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise ApiUnavailable(f"run {self.run!r}: nothing answers at {self.url} ({reason})") from None

    # -- queries -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self._call("GET", "/v1/status")

    def metrics(self, keys: list[str] | None = None, since: int | None = None, until: int | None = None,
                branch: str | None = None, max_points: int | None = None) -> dict[str, dict[str, list[Any]]]:
        query = {"keys": ",".join(keys) if keys else None, "since": since, "until": until, "branch": branch,
                 "max_points": max_points}
        return self._call("GET", "/v1/metrics", query)

    def commands(self, limit: int | None = None, newest_first: bool = False) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/commands", {"limit": limit, "newest_first": str(newest_first).lower()})

    def checkpoints(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/checkpoints")

    # -- commands ------------------------------------------------------------------------
    def submit(self, command: dict[str, Any], source: str | None = None) -> CommandRecord:
        """Submit a command (a dict); its record, accepted or rejected with the reason."""
        from ray_interactive.core.commands import CommandRecord

        doc = self._call("POST", "/v1/commands", {"source": source}, body=command)
        return CommandRecord.model_validate(doc)

    def wait(self, command: CommandRecord | str, timeout: float = 60.0) -> CommandRecord:
        """Until the command is applied, failed or rejected; ``TimeoutError`` after ``timeout``."""
        from ray_interactive.core.commands import CommandRecord, CommandStatus

        cid = command.id if isinstance(command, CommandRecord) else command
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            wait = min(left, MAX_WAIT_S)
            rec = CommandRecord.model_validate(
                self._call("GET", f"/v1/commands/{urllib.parse.quote(str(cid), safe='')}", {"wait": f"{wait:.3f}"},
                           timeout=wait + self.timeout))
            if rec.status is not CommandStatus.ACCEPTED:
                return rec
            if left <= 0:
                raise TimeoutError(f"command {cid} was not applied within {timeout:g}s (status: {rec.status.value})")
