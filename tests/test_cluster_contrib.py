"""contrib/: the compose file (Redis and three nodes) and the systemd units describe a
cluster pysfu accepts: every node's environment is loaded by pysfu's own config loader
(valid names and values), the nodes' ids, ports and pipe port ranges do not collide, each
node_url names its own port, and every node uses the one Redis. (Docker is not run here:
the compose file is read as YAML.) The README's shell lines that start Redis and three
nodes on one machine are run as they are, on free ports: all three nodes join."""

from __future__ import annotations

import configparser
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from pysfu.config import Config, load_config
from pysfu.testing.ports import free_media_port, free_port

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib"
VALUES = {"PUBLIC_IP": "203.0.113.10", "PYSFU_CLUSTER_SECRET": "c" * 40,
          "PYSFU_AUTH_SECRET": "a" * 40}


def substitute(text: str) -> str:
    """Compose's ${VAR}, ${VAR:?message} and ${VAR:-default} with test values."""
    def value(match: re.Match[str]) -> str:
        name, rest = match.group(1), match.group(2) or ""
        if name in VALUES:
            return VALUES[name]
        assert rest.startswith(":-"), f"${{{name}}} has no value and no default"
        return rest[2:]

    return re.sub(r"\$\{([A-Z_]+)((?::[?-])[^}]*)?\}", value, text)


def port_range(text: str) -> range:
    first, last = (int(p) for p in text.split("-"))
    return range(first, last + 1)


def check_nodes(configs: list[Config], redis_url: str) -> None:
    assert len(configs) == 3
    assert len({c.node_id for c in configs}) == 3
    assert len({c.port for c in configs}) == 3 and len({c.rtc_port for c in configs}) == 3
    assert len({c.metrics_port for c in configs}) == 3
    ranges = [port_range(c.plain_port_range) for c in configs]
    for i, r in enumerate(ranges):
        for other in ranges[i + 1:]:
            assert not set(r) & set(other), "pipe port ranges overlap"
    for c in configs:
        assert c.cluster_redis_url == redis_url
        assert c.node_url is not None and c.node_url.endswith(f":{c.port}/ws")
        assert c.cluster_placement == "least_loaded"
        assert c.exposed and c.auth_secret is not None  # reachable, with join tokens
        assert c.node_pipe_ip is not None
        # A page of any node may follow a redirect to any other node.
        assert c.allowed_origins is not None
        assert {f"http://{VALUES['PUBLIC_IP']}:{o.port}" for o in configs} <= set(
            c.allowed_origins)


def test_compose_file_describes_redis_and_three_valid_nodes() -> None:
    compose: dict[str, Any] = yaml.safe_load(substitute(
        (CONTRIB / "docker-compose.yml").read_text()))
    services = compose["services"]
    assert set(services) == {"redis", "node-a", "node-b", "node-c"}
    command = services["redis"]["command"]
    redis_port = command[command.index("--port") + 1]
    configs = []
    for name in ("node-a", "node-b", "node-c"):
        service = services[name]
        assert service["depends_on"] == ["redis"] and service["network_mode"] == "host"
        assert service["build"]["dockerfile"] == "contrib/Dockerfile"
        configs.append(load_config(env={k: str(v) for k, v in service["environment"].items()}))
    check_nodes(configs, f"redis://127.0.0.1:{redis_port}/0")
    assert (CONTRIB / "Dockerfile").read_text().count("ENTRYPOINT [\"pysfu\", \"serve\"]") == 1


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def test_systemd_template_and_example_env_files_make_three_valid_nodes() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(CONTRIB / "systemd" / "pysfu@.service")
    service = unit["Service"]
    assert service["ExecStart"].endswith("pysfu serve")
    assert service["Environment"] == "PYSFU_NODE_ID=%i"
    assert "redis-server.service" in unit["Unit"]["After"]
    common = env_file(CONTRIB / "systemd" / "common.env.example")
    node = env_file(CONTRIB / "systemd" / "node.env.example")
    configs = []
    for i, name in enumerate("abc"):  # b.env and c.env: a.env with the next ports
        env = {**common, **node, "PYSFU_NODE_ID": name}
        for key in ("PYSFU_PORT", "PYSFU_RTC_PORT", "PYSFU_METRICS_PORT"):
            env[key] = str(int(node[key]) + i)
        first = port_range(node["PYSFU_PLAIN_PORT_RANGE"]).start + 300 * i
        env["PYSFU_PLAIN_PORT_RANGE"] = f"{first}-{first + 299}"
        env["PYSFU_NODE_URL"] = node["PYSFU_NODE_URL"].replace("8081", env["PYSFU_PORT"])
        configs.append(load_config(env={**env, "PYSFU_ANNOUNCED_IP": VALUES["PUBLIC_IP"]}))
    check_nodes(configs, common["PYSFU_CLUSTER_REDIS_URL"])
    redis_conf = (CONTRIB / "systemd" / "redis-pysfu.conf").read_text()
    assert re.search(r"^port 6379$", redis_conf, re.M) and 'save ""' in redis_conf


def readme_cluster_lines() -> str:
    """The indented shell block of the README's "Running several nodes"."""
    section = (ROOT / "README.md").read_text().split("## Running several nodes", 1)[1]
    block = next(b for b in section.split("\n\n") if b.startswith("    "))
    lines = block.splitlines()
    assert all(line.startswith("    ") for line in lines), lines
    return "\n".join(line[4:] for line in lines)


def node_health(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer
    except OSError:
        return None


def test_readme_lines_start_redis_and_three_nodes(tmp_path: Path) -> None:
    script = readme_cluster_lines()
    script = "\n".join(line for line in script.splitlines()
                       if not line.startswith("apt-get "))
    ports: dict[str, int] = {"6379": free_port()}
    for fixed in ("8081", "8082", "8083", "9461", "9462", "9463"):
        ports[fixed] = free_port()
    for fixed in ("40001", "40002", "40003"):
        ports[fixed] = free_media_port()
    for fixed, free in ports.items():  # the lines' own ports, each replaced by a free one
        assert fixed in script or fixed.startswith("946"), fixed
        script = re.sub(rf"\b{fixed}\b", str(free), script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSFU_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    with (tmp_path / "out.log").open("wb") as out:
        # Its own process group: the nodes and Redis it starts in the background end with
        # it (the script waits for them).
        shell = subprocess.Popen(["bash", "-c", script + "\nwait"], cwd=tmp_path, env=env,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        expected = {ports[p]: n for p, n in (("8081", "a"), ("8082", "b"), ("8083", "c"))}
        deadline = time.monotonic() + 40
        nodes: dict[int, Any] = {}
        while len(nodes) < 3 and time.monotonic() < deadline and shell.poll() is None:
            for port in expected:
                health = node_health(port)
                if health is not None and health.get("node") == expected[port]:
                    nodes[port] = health
            time.sleep(0.2)
        log = (tmp_path / "out.log").read_text(errors="replace")
        assert len(nodes) == 3, log[-3000:]
        assert "event=server.failed" not in log, log[-3000:]
        registered = subprocess.run(
            ["redis-cli", "-p", str(ports["6379"]), "--scan", "--pattern", "pysfu:node:*"],
            capture_output=True, text=True, timeout=10).stdout.split()
        assert sorted(registered) == ["pysfu:node:a", "pysfu:node:b", "pysfu:node:c"]
    finally:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()
