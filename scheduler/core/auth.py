"""Who may do what: principals, their roles, and the decision for one API call.

A *principal* is a named token holder with a role:

- ``member`` of a team: uploads inputs and submits jobs for its team, cancels its team's
  jobs, creates, updates, scales and stops its team's deployments, reads the
  cluster (jobs of every team, their status, teams, usage, nodes, models, plugins,
  config, ``/metrics``) but the logs of its own team's jobs only;
- ``viewer``: reads everything (the audit log included), changes nothing;
- ``metrics``: ``GET /metrics`` only (for Prometheus);
- ``admin``: everything, including ``PUT /v1/config`` and token management. The
  bootstrap token in ``$DCSCHED_HOME/token`` is the admin principal ``admin``.

Tokens are random (256 bits) and only their sha256 is stored, so a copy of the database
gives no one a working token. ``authorize`` is pure: the caller looks up the job's team
or reads the spec's team and passes it in.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

TOKEN_PREFIX = "dcs_"
BOOTSTRAP_PRINCIPAL = "admin"
NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")


class Role(StrEnum):
    MEMBER = "member"
    VIEWER = "viewer"
    ADMIN = "admin"
    METRICS = "metrics"


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    team: str | None = None


class Denied(Exception):
    """The principal may not make this call (HTTP 403); the message says why."""


def new_token() -> str:
    """A fresh token: a fixed prefix (easy to spot in a leak scanner) and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: bytes) -> str:
    """What the store keeps of a token: sha256, hex. Tokens are random and long, so a
    plain hash suffices (no password stretching needed)."""
    return hashlib.sha256(token).hexdigest()


def check_new_principal(name: str, role: str, team: str | None) -> list[str]:
    """Problems with a token request, in words (empty if fine)."""
    problems = []
    if not NAME_PATTERN.match(name):
        problems.append(
            f"name: {name!r} must be 1-64 lower-case letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    elif name == BOOTSTRAP_PRINCIPAL:
        problems.append(f"name: {name!r} is the bootstrap token's principal; choose another")
    if role not in {r.value for r in Role}:
        problems.append(f"role: {role!r} is not one of {', '.join(r.value for r in Role)}")
    elif role == Role.MEMBER and not team:
        problems.append("team: a member needs a team (--team T)")
    return problems


@dataclass(frozen=True)
class Call:
    """One API call as the authorization sees it."""

    method: str
    path: str
    job_team: str | None = None
    """The team of the job (cancel, logs) or deployment (stop, update, scale) the call
    names, if it names one that exists."""
    spec_team: str | None = None
    """For a submission, the team its spec names (None if the spec has none)."""


_JOB_ACTION = re.compile(r"^/v1/jobs/([^/]+)/(cancel|logs|results)$")
_DEPLOYMENT_ACTION = re.compile(r"^/v1/deployments/([^/]+)/(stop|update|scale)$")
ADMIN_ONLY_PREFIXES = ("/v1/tokens",)
VIEWER_READS = ("/v1/audit",)


def action_of(method: str, path: str) -> str | None:
    """The audit action of a state-changing call, or None for a read."""
    if method == "POST" and path == "/v1/jobs":
        return "submit"
    match = _JOB_ACTION.match(path)
    if method == "POST" and match and match.group(2) == "cancel":
        return "cancel"
    if method == "POST" and path == "/v1/uploads":
        return "upload"
    if method == "POST" and path == "/v1/deployments":
        return "serve.create"
    serving = _DEPLOYMENT_ACTION.match(path)
    if method == "POST" and serving:
        return "serve." + serving.group(2)
    if method == "PUT" and path == "/v1/config":
        return "config.apply"
    if method == "POST" and path == "/v1/tokens":
        return "token.create"
    if method == "DELETE" and path.startswith("/v1/tokens/"):
        return "token.revoke"
    if method in {"GET", "HEAD", "OPTIONS"}:
        return None
    return method.lower() + " " + path  # an unknown change: audited under its route


def job_of(path: str) -> str | None:
    """The job id a cancel or logs call names."""
    match = _JOB_ACTION.match(path)
    return match.group(1) if match else None


def deployment_of(path: str) -> str | None:
    """The deployment a stop, update or scale call names."""
    match = _DEPLOYMENT_ACTION.match(path)
    return match.group(1) if match else None


def authorize(principal: Principal, call: Call) -> None:
    """Raise Denied unless ``principal`` may make ``call``."""
    role, method, path = principal.role, call.method.upper(), call.path
    if role is Role.ADMIN:
        return
    reading = method in {"GET", "HEAD"}
    if role is Role.METRICS:
        if reading and path == "/metrics":
            return
        raise Denied(f"principal {principal.name!r} (role metrics) may read /metrics only")
    if path.startswith(ADMIN_ONLY_PREFIXES):
        raise Denied(f"only an admin manages tokens; {principal.name!r} is a {role.value}")
    if role is Role.VIEWER:
        if reading:
            return
        raise Denied(f"principal {principal.name!r} is a viewer: it reads, it changes nothing")
    # member
    if reading:
        if path.startswith(VIEWER_READS):
            raise Denied(f"the audit log is for admins and viewers; {principal.name!r} is a member")
        own = call.job_team is None or call.job_team == principal.team
        if path.endswith(("/logs", "/results")) and not own:
            what = "logs" if path.endswith("/logs") else "results"
            raise Denied(
                f"the {what} of team {call.job_team}'s jobs are for that team; "
                f"{principal.name!r} is a member of team {principal.team}"
            )
        return
    action = action_of(method, path)
    if action in {"submit", "serve.create"}:
        if call.spec_team != principal.team:
            raise Denied(
                f"{principal.name!r} is a member of team {principal.team} and submits for that "
                f"team only, not for {call.spec_team!r}; set `team: {principal.team}` in the spec"
            )
        return
    if action == "upload":
        return  # an input for a job of its own; the submit that names it is checked
    if action in {"cancel", "serve.stop", "serve.update", "serve.scale"}:
        if call.job_team is not None and call.job_team != principal.team:
            what = "job" if action == "cancel" else "deployment"
            raise Denied(
                f"{what} belongs to team {call.job_team}; {principal.name!r} is a member of team "
                f"{principal.team} and changes that team's {what}s only"
            )
        return  # an unknown job or deployment: the route answers 404
    raise Denied(f"principal {principal.name!r} (member of {principal.team}) may not do this")
