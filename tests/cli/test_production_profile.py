"""The production profile without Docker: the commands and environment of docker-compose.yml's
`setup` and `server` services run against the local Redis and PostgreSQL, then README.md's check
(`curl` of /health and of one /features call with the token) is replayed with httpx.

Only what Docker itself provides is translated: the service host names become the local
services, /app and the `repo` volume become this checkout and a temporary directory, and the
project and port are made unique so tests can run side by side.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from featurestore.cli.main import main
from tests.online.conftest import delete_redis_project

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
APP = "/app"  # where the Dockerfile puts this checkout
VOLUME = "/repo"  # where the `repo` volume is mounted
COMPOSE_HOSTS = ("@postgres:", "//redis:")


def readme_check() -> list[str]:
    """The bash block of README.md's "Production profile", continuation lines joined."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Production profile\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert block, "README.md's Production profile has no bash block"
    return block.group(1).replace("\\\n", " ").strip().splitlines()


def curl_calls(lines: list[str]) -> list[list[str]]:
    """The argument lists of every `curl` in ``lines`` (up to `;`, `|` or `&&`)."""
    calls = []
    for line in lines:
        lexer = shlex.shlex(line.split("#")[0], posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        while "curl" in words:
            words = words[words.index("curl") + 1 :]
            end = next((i for i, w in enumerate(words) if w in (";", "|", "&&", "||")), len(words))
            calls.append(words[:end])
            words = words[end:]
    return calls


def replay(call: list[str], base_url: str, token: str) -> httpx.Response:
    """A curl call of the README, made with httpx; `-f` means a status of 400 or more fails."""
    headers: dict[str, str] = {}
    body: str | None = None
    url = None
    args = iter(call)
    for arg in args:
        if arg == "-H":
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip().replace("$FEATURESTORE_TOKEN", token)
        elif arg == "-d":
            body = next(args)
        elif arg.startswith("-"):
            assert set(arg[1:]) <= set("fsS"), f"the test does not know curl option {arg}"
        else:
            url = arg
    assert url is not None and url.startswith("localhost:8080/"), url
    target = base_url + url.removeprefix("localhost:8080")
    if body is None:
        return httpx.get(target, headers=headers, timeout=10)
    return httpx.post(target, headers=headers, content=body, timeout=10)


def compose_command(service: str, repo: Path) -> list[str]:
    spec = COMPOSE["services"][service]
    assert f"repo:{VOLUME}" in spec["volumes"]
    argv = [*spec["entrypoint"], *spec["command"]]
    return [arg.replace(APP, str(ROOT)) if arg.startswith(APP + "/") else str(repo) if arg == VOLUME else arg
            for arg in argv]


def compose_environment(service: str, local: dict[str, str], shell: dict[str, str]) -> dict[str, str]:
    """The service's environment with `${VAR:-default}` taken from ``shell`` (the user's
    shell) and the values naming compose services replaced by ``local``."""
    env = {}
    for key, value in COMPOSE["services"][service]["environment"].items():
        value = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: shell.get(m[1]) or m[2], str(value))
        if any(host in value for host in COMPOSE_HOSTS):
            assert key in local, f"{key} names a compose service; the test needs its local value"
            value = local[key]
        env[key] = value
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listens_on_every_interface(port: int) -> bool:
    """Whether a socket listens on 0.0.0.0:``port`` (Linux /proc/net/tcp; LISTEN is state 0A)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if local == f"00000000:{port:04X}" and state == "0A":
            return True
    return False


@pytest.fixture
def profile_env(tmp_path: Path, redis_url: str, postgres_url: str, unique_project: str) -> Iterator[dict[str, Any]]:
    local = {
        "FEATURESTORE__REGISTRY": postgres_url,
        "FEATURESTORE__POSTGRES_URL": postgres_url.replace("postgresql+psycopg://", "postgresql://"),
        "FEATURESTORE__ONLINE_STORE__URL": redis_url,
    }
    port = free_port()
    # Not from compose: the interpreter of this test, a unique project and a free port.
    extra = {
        "PYTHON": sys.executable, "PYTHONPATH": str(ROOT),
        "FEATURESTORE__PROJECT": unique_project, "FEATURESTORE__SERVER__PORT": str(port),
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("FEATURESTORE")}
    yield {"local": local, "base": {**base, **extra}, "port": port, "repo": tmp_path / "volume" / "repo"}
    delete_redis_project(redis_url, unique_project)


def run_setup(profile: dict[str, Any], shell: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**profile["base"], **compose_environment("setup", profile["local"], shell)}
    result = subprocess.run(compose_command("setup", profile["repo"]), env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def start_server(profile: dict[str, Any], shell: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    env = {**profile["base"], **compose_environment("server", profile["local"], shell)}
    with log.open("wb") as out:
        return subprocess.Popen(compose_command("server", profile["repo"]), env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def stop(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(10)


def run_readme_check(base_url: str, token: str, server: subprocess.Popen[bytes], log: Path) -> None:
    health_call, features_call = curl_calls(readme_check())
    deadline = time.monotonic() + 60
    while True:  # the README's `until curl -fsS .../health`
        assert server.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
        try:
            health = replay(health_call, base_url, token)
            if health.status_code < 400:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"/health never answered:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    assert health.json()["status"] == "ok", health.text
    features = replay(features_call, base_url, token)
    assert features.status_code == 200, features.text
    statuses = [s for f in features.json()["features"].values() for s in f["statuses"]]
    assert statuses and set(statuses) == {"present"}, features.text  # setup materialized
    without_token = replay(drop_header(features_call, "Authorization"), base_url, token)
    assert without_token.status_code == 401, without_token.text


def drop_header(call: list[str], name: str) -> list[str]:
    out: list[str] = []
    for arg in call:
        if out and out[-1] == "-H" and arg.startswith(name + ":"):
            out.pop()
        else:
            out.append(arg)
    assert len(out) == len(call) - 2, call
    return out


def readme_token() -> str:
    """The token the README's first line exports."""
    export = next(line for line in readme_check() if line.startswith("export FEATURESTORE_TOKEN="))
    result = subprocess.run(["sh", "-c", f'{export}; printf %s "$FEATURESTORE_TOKEN"'], capture_output=True,
                            text=True, check=True)
    assert result.stdout.startswith("fs_") and len(result.stdout) > 40
    return result.stdout


@pytest.mark.integration
@pytest.mark.parametrize("token_from", ["the environment", "setup"])
def test_the_compose_sequence_serves_features_with_a_token(
    profile_env: dict[str, Any], tmp_path: Path, token_from: str
) -> None:
    profile = profile_env
    shell = {"FEATURESTORE_TOKEN": readme_token()} if token_from == "the environment" else {}
    token_file = profile["repo"] / "data" / "server-token"
    first = run_setup(profile, shell)
    assert "Applied registry version 1" in first.stdout
    assert "user_activity" in first.stdout  # materialized
    if token_from == "setup":
        assert token_file.stat().st_mode & 0o077 == 0, "the token file must be private"
        token = token_file.read_text().strip()
        again = run_setup(profile, shell)  # `docker compose up` again: nothing is re-created
        assert "No changes" in again.stdout and "Created" not in again.stdout
        assert token_file.read_text().strip() == token
    else:
        token = shell["FEATURESTORE_TOKEN"]
        assert not token_file.exists()
    log = tmp_path / "server.log"
    server = start_server(profile, shell, log)
    try:
        run_readme_check(f"http://127.0.0.1:{profile['port']}", token, server, log)
        assert listens_on_every_interface(profile["port"]), "server.host (0.0.0.0) was not honoured"
    finally:
        stop(server)
    assert f"on http://0.0.0.0:{profile['port']}" in log.read_text()


def test_the_profile_binds_every_interface_only_with_a_token() -> None:
    env = COMPOSE["services"]["server"]["environment"]
    assert env["FEATURESTORE__SERVER__HOST"] == "0.0.0.0"
    assert "FEATURESTORE_TOKEN" in env
    assert COMPOSE["services"]["server"]["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"WORKDIR {APP}\n" in dockerfile and "COPY deploy deploy\n" in dockerfile


def test_serve_refuses_every_interface_without_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "repo"
    assert main(["init", str(root), "--template", "blank"]) == 0
    capsys.readouterr()
    monkeypatch.delenv("FEATURESTORE__SERVER__TOKENS", raising=False)
    for argv, env_host in ((["--host", "0.0.0.0"], None), ([], "0.0.0.0"), ([], "::"), ([], "example.org")):
        if env_host:
            monkeypatch.setenv("FEATURESTORE__SERVER__HOST", env_host)
        assert main(["-r", str(root), "serve", *argv]) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2, err
        assert err[0].startswith(f"error: refusing to serve on {env_host or '0.0.0.0'} without tokens")
        assert err[1].startswith("hint: ") and "featurestore token create" in err[1]


def test_the_profile_script_says_what_is_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURESTORE")}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    script = str(ROOT / "deploy" / "production.sh")
    served = subprocess.run(["sh", script, "serve", str(tmp_path)], env=env, capture_output=True, text=True)
    assert served.returncode == 1
    assert served.stderr.splitlines()[0].startswith("error: no server token")
    assert served.stderr.splitlines()[1].startswith("hint: ")
    unknown = subprocess.run(["sh", script, "deploy", str(tmp_path)], env=env, capture_output=True, text=True)
    assert unknown.returncode == 1 and "setup|serve" in unknown.stderr


def test_loopback_addresses() -> None:
    from featurestore.cli.serve_cmd import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.org", ""]))
