"""Who may open a served page: the rule every surface follows (control UI, NeuralOS demo).

Loopback needs no login. Any other address needs a username and password (``--auth-file``
with one line ``user:password``, or an environment variable); without one the server
refuses to start. Monitoring pages are off and nothing is shared through Gradio's relay.
"""

from __future__ import annotations

import os
from pathlib import Path

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_bind(host: str, auth: tuple[str, str] | None, what: str = "the UI") -> None:
    """Refuse to serve beyond this machine without a login."""
    if host not in LOCAL_HOSTS and auth is None:
        raise ValueError(
            f"refusing to bind {what} to {host} without authentication: give --auth-file FILE (one line "
            "user:password) or set RI_UI_AUTH=user:password, or bind to 127.0.0.1"
        )
    if auth is not None and (not auth[0] or len(auth[1]) < 8):
        raise ValueError(f"the password of {what} must be at least 8 characters and the user name non-empty")


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``user:password`` -> the pair; empty -> None."""
    if not text:
        return None
    user, sep, password = text.strip().partition(":")
    if not sep:
        raise ValueError("authentication must be given as user:password")
    return user, password


def read_auth(auth_file: str | Path | None, env: str = "RI_UI_AUTH") -> tuple[str, str] | None:
    """The login from ``auth_file`` if given, else from the environment variable ``env``."""
    text = Path(auth_file).read_text() if auth_file else os.environ.get(env)
    return parse_auth(text)
