"""Authenticated download service for audited generators (FastAPI, Flower-free).

Routes (all but ``/healthz`` need ``Authorization: Bearer <token>``; anything else is answered ``401``):

``GET /healthz``
    liveness probe, no authentication, reveals nothing about the artifacts.
``GET /generators``
    every ``generator-v<N>`` under the artifacts folder with its release status, epsilon report and audit summary.
``GET /generators/{version}``
    one generator's metadata: manifest, configuration, schema, epsilon report, audit status and model card.
``GET /generators/{version}/download``
    the artifact as a zip (:func:`~fedsynth.common.artifact.package_release`); ``403`` with the failed checks for
    a generator that is not audited, failed its audit, or was audited for other weights.
``GET /generators/{version}/sample?n=&seed=&steps=``
    ``n`` synthetic rows as CSV (``n`` capped), released generators only.

``{version}`` is ``3``, ``v3`` or ``generator-v3``. The release gate is re-read on every request, so a new audit
verdict takes effect at once. Integrity is checked on every request too (SHA-256 of every file in
``manifest.json``): a modified artifact answers ``409``.

Tokens (see :class:`TokenStore`) are compared in constant time against SHA-256 digests; plain tokens in a token
file are hashed when the file is read and never kept.
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' annotations at runtime and they
# refer to names local to create_app().
import hashlib
import hmac
import io
import logging
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from fedsynth.common.artifact import (
    AUDIT_STATUS,
    Generator,
    load_generator,
    package_release,
    read_manifest,
    release_status,
)
from fedsynth.common.errors import ArtifactError, ConfigError, ReleaseBlocked
from fedsynth.common.io import read_json

__all__ = ["TokenStore", "ServeSettings", "create_app", "new_token", "hash_token"]

log = logging.getLogger("fedsynth.serve")

_VERSION_RE = re.compile(r"(?:generator-)?v?(\d{1,9})")
_HASH_RE = re.compile(r"sha256:([0-9a-fA-F]{64})")


def hash_token(token: str) -> str:
    """The token-file line for ``token``: ``sha256:<hex digest>``."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random bearer token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


# tokens


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    label: str


class TokenStore:
    """Bearer tokens accepted by the service.

    Token file format (UTF-8, one token per line)::

        # comments and blank lines are ignored
        sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  alice@site-a
        s3cr3t-plain-token                                                      ci-robot

    The first field is either ``sha256:<64 hex digits>`` (the SHA-256 of the token, as printed by
    ``fedsynth serve-token``) or the token itself; the rest of the line is a label used in the access log.
    Prefer hashes: then the file holds nothing that can be replayed. The file is re-read when its
    modification time changes, so tokens can be added or revoked without a restart.

    Args:
        entries: ``(token-or-hash, label)`` pairs, in token-file syntax.
        path: the token file, for reloading (set by :meth:`from_file`).
    """

    def __init__(self, entries: Iterable[tuple[str, str]] = (), *, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._path = path
        self._mtime: float | None = None
        self._entries = self._parse(entries)

    @staticmethod
    def _parse(entries: Iterable[tuple[str, str]]) -> tuple[_Entry, ...]:
        out = []
        for field, label in entries:
            m = _HASH_RE.fullmatch(field)
            digest = bytes.fromhex(m.group(1)) if m else hashlib.sha256(field.encode()).digest()
            out.append(_Entry(digest, label or f"token-{len(out) + 1}"))
        return tuple(out)

    @staticmethod
    def _read_lines(path: Path) -> list[tuple[str, str]]:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read token file {path}: {exc}") from exc
        entries = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            field, _, label = line.partition(" ")
            entries.append((field, label.strip()))
        return entries

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "TokenStore":
        """Read a token file (see the class docstring).

        Raises:
            ConfigError: the file cannot be read or holds no token.
        """
        p = Path(path)
        store = cls(cls._read_lines(p), path=p)
        store._mtime = p.stat().st_mtime
        if not store._entries:
            raise ConfigError(f"token file {p} holds no token; add one with `fedsynth serve-token --token-file {p}`")
        return store

    @classmethod
    def from_tokens(cls, tokens: Iterable[str]) -> "TokenStore":
        """A store of plain tokens (or ``sha256:`` digests), e.g. for tests."""
        return cls((t, "") for t in tokens)

    def __len__(self) -> int:
        return len(self._entries)

    def _maybe_reload(self) -> None:
        if self._path is None:
            return
        try:
            mtime = self._path.stat().st_mtime
        except OSError:
            return  # keep the last good set rather than locking everybody out
        if mtime == self._mtime:
            return
        with self._lock:
            try:
                self._entries = self._parse(self._read_lines(self._path))
                self._mtime = mtime
                log.info("reloaded %d token(s) from %s", len(self._entries), self._path)
            except ConfigError as exc:
                log.error("%s; keeping the previous tokens", exc)

    def verify(self, token: str) -> str | None:
        """The label of ``token`` if it is accepted, else ``None`` (constant time in the token's value)."""
        self._maybe_reload()
        presented = hashlib.sha256(token.encode()).digest()
        found: str | None = None
        for entry in self._entries:  # no early exit: the time spent does not depend on which entry matched
            if hmac.compare_digest(presented, entry.digest):
                found = entry.label
        return found


# settings and artifact lookup


@dataclass(frozen=True)
class ServeSettings:
    """Limits of the service.

    Args:
        max_sample_rows: the most rows one ``/sample`` request may ask for.
        max_sample_steps: the most DDIM reverse steps one ``/sample`` request may ask for.
        cache_size: how many loaded generators are kept in memory.
    """

    max_sample_rows: int = 10_000
    max_sample_steps: int = 200
    cache_size: int = 2


def _artifact_dir(root: Path, version: str) -> Path:
    m = _VERSION_RE.fullmatch(version)
    if m is None:
        raise HTTPException(404, f"unknown generator {version!r}; use a version number such as 3 or v3")
    path = root / f"generator-v{int(m.group(1))}"
    if not (path / "manifest.json").is_file():
        raise HTTPException(404, f"generator v{int(m.group(1))} does not exist")
    return path


def _versions(root: Path) -> list[Path]:
    found = []
    for p in root.glob("generator-v*"):
        m = re.fullmatch(r"generator-v(\d+)", p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _epsilon_report(path: Path) -> dict[str, Any]:
    ledger = read_json(path / "privacy_ledger.json", what="privacy report")
    sites = {
        str(site): {k: info.get(k) for k in ("epsilon", "delta", "rounds", "num_examples") if k in info}
        for site, info in dict(ledger.get("sites", {})).items()
    }
    eps = [float(s["epsilon"]) for s in sites.values() if s.get("epsilon") is not None]
    return {"max_epsilon": max(eps) if eps else None, "sites": sites}


def _audit_summary(path: Path) -> dict[str, Any]:
    status = release_status(path)
    out: dict[str, Any] = {
        "released": status.released,
        "audited": status.audited,
        "passed": status.passed,
        "failed_checks": list(status.failed_checks),
        "report": status.report,
    }
    raw = path / AUDIT_STATUS
    if raw.exists():
        data = read_json(raw, what="audit status")
        out["audited_at"] = data.get("audited_at")
        out["summary"] = data.get("summary", {})
    return out


def _describe(path: Path) -> dict[str, Any]:
    manifest = read_manifest(path)  # integrity check first: everything below is then trusted
    return {
        "version": int(manifest["version"]),
        "name": path.name,
        "created": manifest.get("created"),
        "weights_sha256": manifest["files"]["weights.pt"],
        "privacy": _epsilon_report(path),
        "audit": _audit_summary(path),
    }


class _GeneratorCache:
    """A few loaded generators, keyed by folder and weights hash; sampling is serialised (CPU-bound)."""

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._items: OrderedDict[tuple[str, str], Generator] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, path: Path, weights_sha256: str) -> Generator:
        key = (str(path), weights_sha256)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        gen = load_generator(path)
        self._items[key] = gen
        while len(self._items) > self._size:
            self._items.popitem(last=False)
        return gen


# app


def create_app(
    artifacts_dir: str | os.PathLike[str],
    tokens: TokenStore | Iterable[str],
    *,
    settings: ServeSettings | None = None,
) -> FastAPI:
    """Build the download service for the ``generator-v<N>`` folders under ``artifacts_dir``.

    Args:
        artifacts_dir: folder written by the ServerApp and the auditor.
        tokens: accepted bearer tokens (a :class:`TokenStore`, or plain tokens / ``sha256:`` digests).
        settings: limits; defaults to :class:`ServeSettings`.

    Returns:
        The FastAPI application (serve it with uvicorn, or test it with ``fastapi.testclient.TestClient``).

    Raises:
        ConfigError: no token is configured (the service would be unusable or, worse, open).
    """
    root = Path(artifacts_dir)
    store = tokens if isinstance(tokens, TokenStore) else TokenStore.from_tokens(tokens)
    if len(store) == 0:
        raise ConfigError("the download service needs at least one bearer token")
    cfg = settings or ServeSettings()
    cache = _GeneratorCache(cfg.cache_size)

    app = FastAPI(
        title="fedsynth generator downloads",
        description="Audited, differentially private synthetic-data generators.",
        version="1",
        docs_url=None,  # no unauthenticated API explorer
        redoc_url=None,
        openapi_url=None,
    )

    def authenticate(request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        label = store.verify(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if label is None:
            log.warning("rejected request %s %s from %s", request.method, request.url.path,
                        request.client.host if request.client else "?")
            raise HTTPException(
                401, "missing or invalid bearer token", headers={"WWW-Authenticate": 'Bearer realm="fedsynth"'}
            )
        return label

    User = Annotated[str, Depends(authenticate)]

    @app.exception_handler(ArtifactError)
    async def _artifact_error(_: Request, exc: ArtifactError) -> JSONResponse:
        return JSONResponse({"detail": f"artifact failed its integrity check: {exc}"}, status_code=409)

    def blocked(path: Path) -> JSONResponse | None:
        status = release_status(path)
        if status.released:
            return None
        return JSONResponse(
            {
                "detail": "generator is not released" if not status.audited else "generator failed its privacy audit",
                "audited": status.audited,
                "passed": status.passed,
                "failed_checks": list(status.failed_checks),
            },
            status_code=403,
        )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/generators")
    def list_generators(user: User) -> dict[str, Any]:
        items = []
        for path in _versions(root):
            try:
                items.append(_describe(path))
            except ArtifactError as exc:
                items.append({"name": path.name, "error": str(exc), "audit": {"released": False}})
        return {"generators": items}

    @app.get("/generators/{version}")
    def get_generator(version: str, user: User) -> dict[str, Any]:
        path = _artifact_dir(root, version)
        info = _describe(path)
        config = read_json(path / "config.json", what="artifact config")
        info.update(
            manifest=read_manifest(path, verify=False),
            config=config,
            schema=read_json(path / "schema.json", what="schema"),
            model_card=(path / "MODEL_CARD.md").read_text(encoding="utf-8"),
        )
        return info

    @app.get("/generators/{version}/download")
    def download(version: str, user: User) -> Response:
        path = _artifact_dir(root, version)
        refusal = blocked(path)
        if refusal is not None:
            log.warning("refused download of %s by %s: not released", path.name, user)
            return refusal
        try:
            data = package_release(path)
        except ReleaseBlocked:  # the verdict changed between the two reads
            return blocked(path) or JSONResponse({"detail": "generator is not released"}, status_code=403)
        log.info("download of %s by %s (%d bytes)", path.name, user, len(data))
        return Response(
            data,
            media_type="application/zip",
            headers={
                "Content-Disposition": f'attachment; filename="{path.name}.zip"',
                "X-Content-SHA256": hashlib.sha256(data).hexdigest(),
            },
        )

    @app.get("/generators/{version}/sample")
    def sample_rows(
        version: str,
        user: User,
        n: Annotated[int, Query(ge=1, le=cfg.max_sample_rows, description="rows to draw")] = 100,
        seed: Annotated[int | None, Query(ge=0, le=2**63 - 1, description="seed for reproducible rows")] = None,
        steps: Annotated[int | None, Query(ge=1, le=cfg.max_sample_steps, description="DDIM steps")] = None,
    ) -> Response:
        path = _artifact_dir(root, version)
        refusal = blocked(path)
        if refusal is not None:
            return refusal
        weights = read_manifest(path)["files"]["weights.pt"]
        with cache.lock:  # one sampler at a time: it is CPU-bound and the service must stay responsive
            gen = cache.get(path, weights)
            df = gen.sample(n, sampler="ddim", steps=steps, seed=seed)
        buf = io.StringIO()
        df.to_csv(buf, index=False)
        log.info("sampled %d rows from %s for %s", n, path.name, user)
        return Response(
            buf.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{path.name}-sample.csv"'},
        )

    return app
