"""contrib/: the compose file (Redis and three nodes) and the systemd units describe a
cluster pysfu accepts: every node's environment is loaded by pysfu's own config loader
(valid names and values), the nodes' ids, ports and pipe port ranges do not collide, each
node_url names its own port, and every node uses the one Redis. (Docker is not run here:
the compose file is read as YAML.)"""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any

import yaml

from pysfu.config import Config, load_config

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
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
