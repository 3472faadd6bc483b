"""deploy/: the compose file, Dockerfiles, systemd unit, example configs and runbook agree with the code.

Flags used anywhere in deploy/ are checked against the real ``--help`` of flwr 1.42 and of ``fedsynth``, so
a renamed or removed option fails here instead of at a hospital.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
FLAG = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")


@functools.cache
def _help_flags(*command: str) -> frozenset[str]:
    """Options of ``command``: from the click tree of the Typer apps (fedsynth, flwr), else from ``--help``."""
    if command[0] in ("fedsynth", "flwr"):
        import typer.main

        if command[0] == "fedsynth":
            from fedsynth.cli.main import app

            _mount_fedsynth_subcommands()
        else:
            from flwr.cli.app import app
        cmd = typer.main.get_command(app)
        for word in command[1:]:
            sub = cmd.commands.get(word)  # type: ignore[attr-defined]
            assert sub is not None, f"{' '.join(command)}: no such command"
            cmd = sub
        return frozenset(o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--"))
    exe = shutil.which(command[0], path=str(BIN)) or command[0]
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    res = subprocess.run([exe, *command[1:], "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return frozenset(FLAG.findall(res.stdout + res.stderr))


@functools.cache
def _mount_fedsynth_subcommands() -> None:
    from fedsynth.cli.main import _mount_optional

    _mount_optional()


def _program_and_flags(argv: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """The help command for ``argv`` (program + subcommands) and the ``--flags`` it uses."""
    prog = Path(argv[0]).name
    if prog == "fedsynth" and argv[1:2] == ["site-agent"]:
        # every option of `fedsynth site-agent` is a flower-supernode option (it adds --isolation itself)
        return ("flower-supernode",), [a.split("=")[0] for a in argv if a.startswith("--")]
    if prog in ("flwr", "fedsynth"):
        words = [prog]
        for a in argv[1:]:
            if a.startswith("-"):
                break
            if prog == "flwr" and len(words) < 3 and a in {"supernode", "run", "ls", "log", "stop", "register",
                                                             "list", "unregister", "build"}:
                words.append(a)
            elif prog == "fedsynth" and (len(words) == 1 or (words[1:] == ["audit"] and a in {
                    "canaries", "sample", "site-stats"})):
                words.append(a)
        return tuple(words), [a.split("=")[0] for a in argv if a.startswith("--")]
    return (prog,), [a.split("=")[0] for a in argv if a.startswith("--")]


def _assert_flags_exist(argv: list[str]) -> None:
    command, flags = _program_and_flags(argv)
    known = _help_flags(*command)
    unknown = [f for f in flags if f not in known and f != "--help"]
    assert not unknown, f"{' '.join(command)} has no option(s) {unknown}"


# compose


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yml").read_text())


def _defaults(text: str) -> str:
    """Substitute compose's ``${VAR:-default}`` with the default."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)


def test_compose_has_superlink_three_sites_and_auditor(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"superlink", "site-a", "site-b", "site-c", "auditor"}
    for name, svc in services.items():
        build = svc["build"]
        assert (DEPLOY / build["context"]).resolve() == ROOT, name
        assert (ROOT / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} does not exist"
        assert "no-new-privileges:true" in svc["security_opt"]
    assert set(compose["volumes"]) >= {"superlink-state", "fedsynth-output", "site-a-ledger", "site-b-ledger",
                                       "site-c-ledger"}


def test_compose_superlink_uses_tls_node_auth_and_a_durable_database(compose: dict) -> None:
    cmd = compose["services"]["superlink"]["command"]
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth", "--database",
                 "--disable-runtime-dependency-installation"):
        assert flag in cmd
    assert "--insecure" not in cmd
    _assert_flags_exist(["flower-superlink", *cmd])
    db = cmd[cmd.index("--database") + 1]
    assert any(v.startswith("superlink-state:") and db.startswith(v.split(":")[1])
               for v in compose["services"]["superlink"]["volumes"])


@pytest.mark.parametrize("site", ["site-a", "site-b", "site-c"])
def test_compose_site_agents_mount_data_read_only_and_a_ledger_volume(compose: dict, site: str) -> None:
    from flwr.common.config import parse_config_args

    from fedsynth.client.site import SiteSettings

    svc = compose["services"][site]
    cmd = svc["command"]
    _assert_flags_exist(["flower-supernode", *cmd])
    assert "--insecure" not in cmd and "--root-certificates" in cmd and "--auth-supernode-private-key" in cmd
    volumes = [_defaults(v) for v in svc["volumes"]]
    data = [v for v in volumes if v.split(":")[1] == "/data"]
    assert len(data) == 1 and data[0].endswith(":ro")
    assert f"{site}-ledger:/var/lib/fedsynth" in volumes
    node_config = parse_config_args([_defaults(cmd[cmd.index("--node-config") + 1])])
    settings = SiteSettings.from_node_config(node_config, node_id=1)
    assert settings.site_id == site
    assert settings.data_path.parent == Path("/data")
    assert settings.ledger_path.parent == Path("/var/lib/fedsynth")
    assert settings.secure_mode


def test_compose_auditor_serves_with_tls_and_tokens(compose: dict) -> None:
    cmd = compose["services"]["auditor"]["command"]
    assert cmd[0] == "serve"
    _assert_flags_exist(["fedsynth", *cmd])
    assert {"--certfile", "--keyfile", "--token-file"} <= set(cmd)
    artifacts = cmd[cmd.index("--artifacts") + 1]
    assert any(v.startswith("fedsynth-output:") and artifacts.startswith(v.split(":")[1])
               for v in compose["services"]["auditor"]["volumes"])


# Dockerfiles


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_files_that_exist_and_runs_as_non_root(dockerfile: Path) -> None:
    import json

    ins = _instructions(dockerfile)
    copies = [rest for op, rest in ins if op == "COPY"]
    assert copies
    for rest in copies:
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"{dockerfile.name}: COPY source {src} does not exist"
    assert any(op == "USER" and rest not in ("root", "0") for op, rest in ins)
    entry = json.loads(next(rest for op, rest in ins if op == "ENTRYPOINT"))
    cmd = json.loads(next(rest for op, rest in ins if op == "CMD"))
    _assert_flags_exist([*entry, *cmd])


def test_site_agent_image_runs_the_warm_site_agent() -> None:
    import json

    ins = _instructions(DEPLOY / "docker" / "site-agent.Dockerfile")
    entry = json.loads(next(rest for op, rest in ins if op == "ENTRYPOINT"))
    cmd = json.loads(next(rest for op, rest in ins if op == "CMD"))
    assert entry == ["fedsynth", "site-agent"]
    assert "--isolation" not in cmd  # the agent sets --isolation process itself and refuses another value


def test_the_three_images_exist() -> None:
    assert {p.name for p in DOCKERFILES} == {"superlink.Dockerfile", "site-agent.Dockerfile", "auditor.Dockerfile"}


def test_dockerignore_keeps_the_venv_out_of_the_build_context() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".venv" in lines and ".git" in lines


# systemd, example configs, Flower app


def _unit() -> dict[str, list[str]]:
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "systemd" / "fedsynth-site-agent.service").read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_systemd_unit_is_hardened_and_uses_real_flags() -> None:
    unit = _unit()
    assert unit["User"] == ["fedsynth"] and unit["Restart"] == ["on-failure"]
    assert unit["StateDirectory"] == ["fedsynth-site-agent"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["ProtectSystem"] == ["strict"]
    assert "/srv/fedsynth-site/data" in unit["ReadOnlyPaths"][0].split()
    argv = shlex.split(unit["ExecStart"][0])
    assert Path(argv[0]).name == "fedsynth" and argv[1] == "site-agent"
    _assert_flags_exist(argv)
    assert "--insecure" not in argv and "--isolation" not in argv


def test_systemd_unit_verifies() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    res = subprocess.run(["systemd-analyze", "verify", str(DEPLOY / "systemd" / "fedsynth-site-agent.service")],
                         capture_output=True, text=True, timeout=60)
    problems = [line for line in (res.stdout + res.stderr).splitlines()
                if line.strip() and "is not executable" not in line and "/opt/fedsynth" not in line]
    assert not problems, problems


def test_site_config_example_is_a_valid_node_config_inside_the_units_paths() -> None:
    from flwr.common.config import parse_config_args

    from fedsynth.client.site import SiteSettings

    node_config = parse_config_args([str(DEPLOY / "site-config.example.toml")])  # what --node-config FILE.toml does
    settings = SiteSettings.from_node_config(node_config, node_id=1)
    assert settings.secure_mode
    assert settings.ledger_path.parent == Path("/var/lib") / _unit()["StateDirectory"][0]
    assert settings.data_path.is_relative_to(Path(_unit()["ReadOnlyPaths"][0].split()[0]))


def test_env_example_defines_what_the_unit_uses() -> None:
    env = dict(
        line.split("=", 1) for line in (DEPLOY / "site-agent.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    used = set(re.findall(r"\$\{(\w+)\}", _unit()["ExecStart"][0]))
    assert used <= set(env)
    assert env["FEDSYNTH_NODE_CONFIG"].endswith(".toml")


def test_flower_config_example_parses() -> None:
    cfg = tomllib.loads((DEPLOY / "flower-config.example.toml").read_text())
    conn = cfg["superlink"][cfg["superlink"]["default"]]
    assert re.fullmatch(r"[\w.-]+:\d+", conn["address"]) and conn["root-certificates"]


def test_flwr_app_points_at_fedsynth_and_holds_every_run_config_key() -> None:
    from dataclasses import fields

    from fedsynth.cli.federation import COMPONENTS
    from fedsynth.common.config import RunConfig
    from fedsynth.server.app import SERVER_KEYS, split_run_config

    app = tomllib.loads((DEPLOY / "flwr-app" / "pyproject.toml").read_text())
    assert app["tool"]["flwr"]["app"]["components"] == COMPONENTS
    config = app["tool"]["flwr"]["app"]["config"]
    expected = {f.name.replace("_", "-") for f in fields(RunConfig)} | set(SERVER_KEYS)
    assert set(config) == expected
    split_run_config(config)  # every value is valid


# the runbook


def _readme_commands() -> list[list[str]]:
    text = (DEPLOY / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            for part in re.split(r"&&|\|\||;|\|", line):
                try:
                    argv = shlex.split(part.replace(">", " > "))
                except ValueError:
                    continue
                argv = [a for a in argv if not re.fullmatch(r"[A-Z_]+=.*", a)]  # env assignments
                if argv and Path(argv[0]).name in {"flower-superlink", "flower-supernode", "flwr", "fedsynth"}:
                    commands.append(argv[: argv.index(">")] if ">" in argv else argv)
    # inline `...` commands in the prose
    for inline in re.findall(r"`((?:flower-supernode|flower-superlink|flwr|fedsynth) [^`]+)`", text):
        commands.append(shlex.split(inline))
    return commands


def test_runbook_commands_use_real_flags() -> None:
    commands = _readme_commands()
    assert len(commands) >= 10
    seen = set()
    for argv in commands:
        command, _ = _program_and_flags(argv)
        seen.add(command)
        _assert_flags_exist(argv)
    assert {("flower-superlink",), ("flower-supernode",), ("flwr", "run"), ("flwr", "supernode", "register"),
            ("fedsynth", "serve"), ("fedsynth", "serve-token"), ("fedsynth", "audit"),
            ("fedsynth", "audit", "site-stats")} <= seen
