"""``fedsynth serve`` and ``fedsynth serve-token``: the authenticated generator download service."""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fedsynth.common.errors import ConfigError

log = logging.getLogger("fedsynth.serve")

_LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    artifacts: Path, *, host: str = "127.0.0.1", port: int = 8443, token_file: Path | None = None,
    certfile: Path | None = None, keyfile: Path | None = None, insecure: bool = False,
    max_sample_rows: int = 10_000,
) -> None:
    """Run the download service until interrupted.

    Without ``token_file`` a one-time token is generated and printed to stderr (loopback use only).

    Raises:
        ConfigError: half a TLS pair, a missing artifacts folder, or plain HTTP on a non-loopback address
            without ``insecure``.
    """
    import uvicorn

    from fedsynth.server.download import ServeSettings, TokenStore, create_app, new_token

    if not artifacts.is_dir():
        raise ConfigError(f"artifacts folder {artifacts} does not exist")
    if (certfile is None) != (keyfile is None):
        raise ConfigError("give both --certfile and --keyfile for TLS, or neither")
    for f in (certfile, keyfile, token_file):
        if f is not None and not f.is_file():
            raise ConfigError(f"{f} does not exist")
    if certfile is None and not _is_loopback(host) and not insecure:
        raise ConfigError(
            f"refusing to serve bearer tokens over plain HTTP on {host}; give --certfile/--keyfile "
            "(or --insecure behind a TLS-terminating proxy)"
        )
    if token_file is not None:
        tokens = TokenStore.from_file(token_file)
    else:
        if not _is_loopback(host):
            raise ConfigError("give --token-file when serving on a non-loopback address")
        token = new_token()
        tokens = TokenStore.from_tokens([token])
        typer.secho(f"no --token-file: this run accepts the one-time token\n{token}", err=True, fg="yellow")
    app = create_app(artifacts, tokens, settings=ServeSettings(max_sample_rows=max_sample_rows))
    scheme = "https" if certfile else "http"
    typer.echo(f"serving {artifacts} on {scheme}://{host}:{port} ({len(tokens)} token(s))", err=True)
    uvicorn.run(
        app, host=host, port=port, log_level="info", access_log=True,
        ssl_certfile=str(certfile) if certfile else None, ssl_keyfile=str(keyfile) if keyfile else None,
    )


def add_token(token_file: Path | None, *, label: str) -> str:
    """Make a new token; append its SHA-256 line to ``token_file`` (if given) and return the token."""
    from fedsynth.server.download import hash_token, new_token

    if any(c.isspace() for c in label):
        raise ConfigError("the token label must not contain whitespace")
    token = new_token()
    if token_file is not None:
        token_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(f"{hash_token(token)} {label}\n")
    return token


def register(app: typer.Typer) -> None:
    """Mount ``serve`` and ``serve-token`` on the ``fedsynth`` app."""

    @app.command("serve")
    def serve_cmd(
        artifacts: Annotated[Path, typer.Option("--artifacts", help="Folder holding generator-vN artifacts.")],
        host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to bind.")] = 8443,
        token_file: Annotated[
            Optional[Path],
            typer.Option(help="Accepted bearer tokens: one per line, 'sha256:<hex>' or the token, then a label."),
        ] = None,
        certfile: Annotated[Optional[Path], typer.Option(help="TLS certificate (PEM, full chain).")] = None,
        keyfile: Annotated[Optional[Path], typer.Option(help="TLS private key (PEM).")] = None,
        insecure: Annotated[
            bool, typer.Option(help="Allow plain HTTP on a non-loopback address (behind a TLS proxy only).")
        ] = False,
        max_sample_rows: Annotated[int, typer.Option(min=1, help="Most rows one /sample request may ask for.")] = 10_000,
    ) -> None:
        """Serve audited generators over HTTPS to holders of a bearer token."""
        serve(
            artifacts, host=host, port=port, token_file=token_file, certfile=certfile, keyfile=keyfile,
            insecure=insecure, max_sample_rows=max_sample_rows,
        )

    @app.command("serve-token")
    def serve_token_cmd(
        token_file: Annotated[
            Optional[Path], typer.Option(help="Append the new token's SHA-256 line here (created 0600).")
        ] = None,
        label: Annotated[str, typer.Option(help="Who holds the token (shown in the access log).")] = "user",
    ) -> None:
        """Create a download token: prints the token once; stores only its hash."""
        from fedsynth.server.download import hash_token

        token = add_token(token_file, label=label)
        if token_file is None:
            typer.echo(f"{hash_token(token)} {label}", err=True)
        print(token, file=sys.stdout, flush=True)
