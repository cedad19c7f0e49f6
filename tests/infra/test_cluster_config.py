"""The cluster deployment files (docs/cluster.md) without a cluster: they parse, agree with each
other and with dvc.yaml, and pass the validators of Dagster, DVC and DeepSpeed that run offline.

What only a cluster or other tools could check (helm rendering, scheduling, NCCL) is listed at the
end of docs/cluster.md.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from orchestration import dvc_cli

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
VALUES = INFRA / "dagster" / "values.yaml"
INSTANCE = INFRA / "dagster" / "dagster.yaml"
GPU_TAGS = INFRA / "dagster" / "gpu_tags.yaml"
DS_ENV = INFRA / "deepspeed_env.example"
DVC_EXAMPLE = INFRA / "dvc" / "config.example"
WORKSPACE = INFRA / "k8s" / "workspace-volume.yaml"
ENV_CONFIGMAP = INFRA / "k8s" / "dreamer4-env.yaml"
DOC = ROOT / "docs" / "cluster.md"
GPU = "nvidia.com/gpu"

# Keys of the `dagster-k8s/config` tag: dagster_k8s.job.USER_DEFINED_K8S_JOB_CONFIG_SCHEMA.
K8S_TAG_KEYS = {
    "container_config",
    "pod_template_spec_metadata",
    "pod_spec_config",
    "job_config",
    "job_metadata",
    "job_spec_config",
    "merge_behavior",
}
# K8sRunLauncher.config_type() of dagster-k8s 0.29.27 (the release matching dagster 1.13), read
# from the installed package once; dagster-k8s is not a project dependency.
K8S_RUN_LAUNCHER_KEYS = {
    "dagster_home",
    "env_config_maps",
    "env_secrets",
    "env_vars",
    "fail_pod_on_run_failure",
    "image_pull_policy",
    "image_pull_secrets",
    "instance_config_map",
    "job_image",
    "job_namespace",
    "k8s_api_ssl_ca_cert_file",
    "kubeconfig_file",
    "labels",
    "load_incluster_config",
    "only_allow_user_defined_env_vars",
    "only_allow_user_defined_k8s_config_fields",
    "postgres_password_secret",
    "resources",
    "run_k8s_config",
    "scheduler_name",
    "security_context",
    "service_account_name",
    "volume_mounts",
    "volumes",
}
# Properties of the dagster chart's values.schema.json (helm/dagster in dagster-io/dagster) for
# the sections values.yaml sets; K8sRunLauncherConfig and QueuedRunCoordinatorConfig forbid
# other keys (helm install fails), UserDeployment ignores them (a typo would be silently lost).
CHART_K8S_RUN_LAUNCHER_KEYS = {
    "image",
    "imagePullPolicy",
    "jobNamespace",
    "loadInclusterConfig",
    "kubeconfigFile",
    "envConfigMaps",
    "envSecrets",
    "envVars",
    "volumeMounts",
    "volumes",
    "labels",
    "failPodOnRunFailure",
    "resources",
    "schedulerName",
    "securityContext",
    "runK8sConfig",
}
CHART_QUEUED_RUN_COORDINATOR_KEYS = {
    "maxConcurrentRuns",
    "tagConcurrencyLimits",
    "dequeueIntervalSeconds",
    "dequeueNumWorkers",
    "dequeueUseThreads",
    "blockOpConcurrencyLimitedRuns",
}
CHART_USER_DEPLOYMENT_KEYS = {
    "name",
    "image",
    "dagsterApiGrpcArgs",
    "codeServerArgs",
    "includeConfigInLaunchedRuns",
    "deploymentNamespace",
    "port",
    "env",
    "envConfigMaps",
    "envSecrets",
    "annotations",
    "nodeSelector",
    "affinity",
    "tolerations",
    "podSecurityContext",
    "securityContext",
    "resources",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "labels",
    "volumeMounts",
    "volumes",
    "schedulerName",
    "initContainers",
    "sidecarContainers",
}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def values() -> dict:
    return load(VALUES)


@pytest.fixture(scope="module")
def instance() -> dict:
    return load(INSTANCE)


@pytest.fixture(scope="module")
def gpu_tags() -> dict:
    return load(GPU_TAGS)


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict]:
    """The Kubernetes objects of infra/k8s, by (kind, name)."""
    docs = [d for p in (WORKSPACE, ENV_CONFIGMAP) for d in yaml.safe_load_all(p.read_text())]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def user_deployment(values: dict) -> dict:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def dvc_stages() -> dict[str, dict]:
    return load(ROOT / "dvc.yaml")["stages"]


def training_stages() -> set[str]:
    """dvc.yaml stages whose command is a `dreamer4` subcommand that trains through the engine
    (its module calls `dreamer4.train.engine.train_stage`, which starts the launcher)."""
    from dreamer4.cli import COMMANDS

    found = set()
    for name, stage in dvc_stages().items():
        words = stage["cmd"].split()
        if words[0] != "dreamer4":
            continue
        module = COMMANDS[words[1].replace("_", "-")][0]
        source = Path(importlib.util.find_spec(module).origin).read_text()
        calls = {
            getattr(node.func, "id", getattr(node.func, "attr", None))
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call)
        }
        if "train_stage" in calls:
            found.add(name)
    return found


def test_every_yaml_and_json_file_under_infra_parses() -> None:
    files = sorted(
        p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml", ".json"} and p.is_file()
    )
    names = {p.relative_to(INFRA).as_posix() for p in files}
    assert {
        "dagster/values.yaml",
        "dagster/dagster.yaml",
        "dagster/gpu_tags.yaml",
        "k8s/workspace-volume.yaml",
        "k8s/dreamer4-env.yaml",
        "k8s/prometheus-scrape.yaml",
        "prometheus/prometheus.yml",
        "grafana/dreamer4-training.json",
        "deepspeed/zero0.json",
    } <= names
    for path in files:
        if path.suffix == ".json":
            docs = [json.loads(path.read_text())]
        else:
            docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(isinstance(d, dict) and d for d in docs), path


def test_dagster_yaml_passes_dagsters_instance_validation(tmp_path: Path) -> None:
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.config import dagster_instance_config

    shutil.copy(INSTANCE, tmp_path / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(tmp_path), "dagster.yaml")
    assert custom_class is None
    db = config["storage"]["postgres"]["postgres_db"]
    # every connection setting, credentials included, comes from the environment
    assert all(isinstance(v, dict) and set(v) == {"env"} for v in db.values()), db
    assert db["password"] == {"env": "DAGSTER_PG_PASSWORD"}  # what the launcher injects
    assert config["telemetry"] == {"enabled": False}
    assert config["nux"] == {"enabled": False}  # no newsletter dialog on a first visit
    assert config["run_monitoring"]["enabled"] is True

    # the validation is strict: a misspelt key is an error
    broken = load(INSTANCE)
    broken_db = broken["storage"]["postgres"]["postgres_db"]
    broken_db["hostnme"] = broken_db.pop("hostname")
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path), "broken.yaml")


def test_run_queue_loads_and_matches_the_helm_values(instance: dict, values: dict) -> None:
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._serdes.config_class import ConfigurableClassData

    section = instance["run_coordinator"]
    coordinator = ConfigurableClassData(
        section["module"], section["class"], yaml.safe_dump(section["config"])
    ).rehydrate()
    assert isinstance(coordinator, QueuedRunCoordinator)
    queue = coordinator.get_run_queue_config()
    gpu_limits = [t for t in queue.tag_concurrency_limits if t["key"] == "dreamer4/gpu"]
    assert gpu_limits and all(1 <= t["limit"] < queue.max_concurrent_runs for t in gpu_limits)

    daemon = values["dagsterDaemon"]
    assert daemon["enabled"] and daemon["runCoordinator"]["enabled"]
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    helm_queue = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert set(helm_queue) <= CHART_QUEUED_RUN_COORDINATOR_KEYS
    assert helm_queue["maxConcurrentRuns"] == queue.max_concurrent_runs
    assert helm_queue["tagConcurrencyLimits"] == queue.tag_concurrency_limits


def test_run_launcher_is_the_k8s_launcher_in_both_deployments(
    instance: dict, values: dict, manifests: dict
) -> None:
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    config = launcher["config"]
    assert set(config) <= K8S_RUN_LAUNCHER_KEYS, set(config) - K8S_RUN_LAUNCHER_KEYS
    assert config["instance_config_map"] and config["postgres_password_secret"]

    helm = values["runLauncher"]
    assert helm["type"] == "K8sRunLauncher"
    helm_launcher = helm["config"]["k8sRunLauncher"]
    assert set(helm_launcher) <= CHART_K8S_RUN_LAUNCHER_KEYS
    # both deployments hand runs the same ConfigMap and the DVC remote's Secret
    assert [m["name"] for m in helm_launcher["envConfigMaps"]] == config["env_config_maps"]
    assert [s["name"] for s in helm_launcher["envSecrets"]] == config["env_secrets"]
    assert ("ConfigMap", config["env_config_maps"][0]) in manifests
    assert "dreamer4-dvc-remote" in config["env_secrets"]


def test_postgres_settings_agree_across_helm_instance_and_configmap(
    instance: dict, values: dict, manifests: dict
) -> None:
    postgres = values["postgresql"]
    assert postgres["enabled"] is False and postgres["postgresqlHost"]
    # the password is only in the Secret the chart does not generate, named in both deployments
    assert values["generatePostgresqlPasswordSecret"] is False
    assert "postgresqlPassword" not in postgres
    secret = values["global"]["postgresqlSecretName"]
    assert secret == instance["run_launcher"]["config"]["postgres_password_secret"]

    env = manifests[("ConfigMap", "dreamer4-env")]["data"]
    assert (env["DAGSTER_PG_HOST"], env["DAGSTER_PG_DB"], env["DAGSTER_PG_USERNAME"]) == (
        postgres["postgresqlHost"],
        postgres["postgresqlDatabase"],
        postgres["postgresqlUsername"],
    )
    assert int(env["DAGSTER_PG_PORT"]) == postgres["service"]["port"]
    # every variable dagster.yaml reads exists in run pods: the ConfigMap, or the Secret's key
    wanted = {v["env"] for v in instance["storage"]["postgres"]["postgres_db"].values()}
    assert wanted <= set(env) | {"DAGSTER_PG_PASSWORD"}


def test_code_location_and_runs_share_the_workspace(
    instance: dict, values: dict, manifests: dict
) -> None:
    deployment = user_deployment(values)
    assert set(deployment) <= CHART_USER_DEPLOYMENT_KEYS, (
        set(deployment) - CHART_USER_DEPLOYMENT_KEYS
    )
    assert values["dagster-user-deployments"]["enabled"]
    args = deployment["codeServerArgs"]
    module = args[args.index("-m") + 1]
    image_checkout = args[args.index("-d") + 1]
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
    dockerfile = (INFRA / "k8s" / "Dockerfile").read_text()
    assert f"WORKDIR {image_checkout}\n" in dockerfile
    assert isinstance(deployment["port"], int)
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]

    repo = deployment["env"]["DREAMER4_REPO"]
    assert f"DREAMER4_REPO={repo}" in instance["run_launcher"]["config"]["env_vars"]
    # the op tags of gpu_tags.yaml shape pods only under the k8s_job_executor
    assert deployment["env"]["DREAMER4_EXECUTOR"] == "k8s"
    assert "DREAMER4_EXECUTOR=k8s" in instance["run_launcher"]["config"]["env_vars"]
    assert f"DREAMER4_REPO={repo}" in dockerfile
    pvc = manifests[("PersistentVolumeClaim", "dreamer4-workspace")]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    mounts = {
        "helm": (deployment["volumes"], deployment["volumeMounts"], "persistentVolumeClaim"),
        "instance": (
            instance["run_launcher"]["config"]["volumes"],
            instance["run_launcher"]["config"]["volume_mounts"],
            "persistent_volume_claim",
        ),
    }
    for where, (volumes, volume_mounts, pvc_key) in mounts.items():
        (volume,) = volumes
        (mount,) = volume_mounts
        claim = volume[pvc_key].get("claimName") or volume[pvc_key].get("claim_name")
        path = mount.get("mountPath") or mount.get("mount_path")
        assert claim == pvc["metadata"]["name"], where
        assert mount["name"] == volume["name"] and repo.startswith(path + "/"), where
    # the seed Job puts the checkout where DREAMER4_REPO points
    seed = manifests[("Job", "dreamer4-workspace-seed")]["spec"]["template"]["spec"]
    assert f"cd {repo}\n" in seed["containers"][0]["args"][0]
    assert seed["volumes"][0]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert values["telemetry"] == {"enabled": False}


def test_gpu_tags_give_exactly_the_training_stages_a_gpu(gpu_tags: dict) -> None:
    training = training_stages()
    assert len(training) >= 4, training  # the derivation found the engine's stages
    stages = gpu_tags["stages"]
    assert set(stages) <= set(dvc_stages()), set(stages) - set(dvc_stages())
    assert "default" in gpu_tags and set(gpu_tags) == {"stages", "default"}

    with_gpu = set()
    for name, config in {**stages, "<default>": gpu_tags["default"]}.items():
        assert set(config) <= K8S_TAG_KEYS, (name, set(config) - K8S_TAG_KEYS)
        assert json.loads(json.dumps(config)) == config  # exactly the tag's JSON value
        resources = config["container_config"]["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"], name
        if GPU not in resources.get("limits", {}):
            assert GPU not in resources.get("requests", {}), name
            continue
        with_gpu.add(name)
        assert int(resources["limits"][GPU]) >= 1, name
        if GPU in resources.get("requests", {}):  # Kubernetes: equal to the limit, if given
            assert resources["requests"][GPU] == resources["limits"][GPU], name
        pod = config["pod_spec_config"]
        assert pod["node_selector"], name
        assert any(t["key"] == GPU and t["effect"] == "NoSchedule" for t in pod["tolerations"])
        # /dev/shm backed by memory, mounted in the container
        shm = {v["name"] for v in pod["volumes"] if v.get("empty_dir", {}).get("medium")}
        mounted = {m["name"] for m in config["container_config"]["volume_mounts"]}
        assert any(
            m["mount_path"] == "/dev/shm" and m["name"] in shm & mounted
            for m in config["container_config"]["volume_mounts"]
        ), name
    assert with_gpu == training
    assert "evaluate" in stages and "evaluate" not in with_gpu

    # docs/cluster.md shows the training value; it is the one in the file
    (shown,) = re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert all(json.loads(shown) == stages[name] for name in training)


def test_gpu_tags_build_step_pods_through_dagster_k8s(gpu_tags: dict) -> None:
    """Runs where dagster-k8s is installed (the cluster image); it is no project dependency."""
    pytest.importorskip("dagster_k8s")
    import kubernetes
    from dagster_k8s.job import (
        USER_DEFINED_K8S_CONFIG_KEY,
        DagsterK8sJobConfig,
        construct_dagster_k8s_job,
        get_user_defined_k8s_config,
    )

    assert USER_DEFINED_K8S_CONFIG_KEY == "dagster-k8s/config"
    job_config = DagsterK8sJobConfig(job_image="dreamer4:test", dagster_home="/opt/dagster")
    for name, config in {**gpu_tags["stages"], "<default>": gpu_tags["default"]}.items():
        user_config = get_user_defined_k8s_config(
            {USER_DEFINED_K8S_CONFIG_KEY: json.dumps(config)}
        )  # validates the keys against the Kubernetes client's models
        job = construct_dagster_k8s_job(job_config, ["true"], "step", user_config)
        pod = kubernetes.client.ApiClient().sanitize_for_serialization(job)["spec"]["template"]
        limits = pod["spec"]["containers"][0]["resources"].get("limits", {})
        expected = config["container_config"]["resources"].get("limits", {})
        assert limits.get(GPU) == expected.get(GPU), name
        selector = config.get("pod_spec_config", {}).get("node_selector")
        assert pod["spec"].get("nodeSelector") == selector, name


def test_deepspeed_zero_configs_use_only_keys_deepspeed_knows() -> None:
    """Key names as the installed DeepSpeed defines them, read from its source (importing it
    would import torch): top-level keys are the string constants of deepspeed/runtime/constants.py,
    `zero_optimization` keys the fields and aliases of DeepSpeedZeroConfig, which rejects
    others. tests/train/test_engine_parts.py covers how the engine fills in the rest."""
    package = Path(importlib.util.find_spec("deepspeed").submodule_search_locations[0])

    def constants(path: Path) -> set[str]:
        return {
            node.value.value
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets)
        }

    top_level = constants(package / "runtime" / "constants.py") | constants(
        package / "runtime" / "zero" / "config.py"
    )
    zero_tree = ast.parse((package / "runtime" / "zero" / "config.py").read_text())
    (zero_class,) = [
        n for n in zero_tree.body if isinstance(n, ast.ClassDef) and n.name == "DeepSpeedZeroConfig"
    ]
    zero_keys = set()
    for node in zero_class.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            zero_keys.add(node.target.id)
            if isinstance(node.value, ast.Call):
                zero_keys |= {
                    k.value.value
                    for k in node.value.keywords
                    if k.arg == "alias" and isinstance(k.value, ast.Constant)
                }
    assert {"zero_optimization", "steps_per_print", "train_micro_batch_size_per_gpu"} <= top_level
    assert {"stage", "reduce_bucket_size", "stage3_prefetch_bucket_size"} <= zero_keys

    for stage in range(4):
        config = json.loads((INFRA / "deepspeed" / f"zero{stage}.json").read_text())
        assert set(config) <= top_level, (stage, set(config) - top_level)
        assert config["zero_optimization"]["stage"] == stage
        unknown = set(config["zero_optimization"]) - zero_keys
        assert not unknown, (stage, unknown)


def test_deepspeed_env_example_installs_into_lines_deepspeeds_launcher_reads() -> None:
    text = DS_ENV.read_text()
    install = "grep -Ev '^[[:space:]]*(#|$)' infra/deepspeed_env.example > .deepspeed_env"
    assert install in text and install in DOC.read_text()
    # the same filter in Python, then the launcher's own parsing (runner.py: split at the first
    # '='), which has no comment handling: a comment line left in would stop the launch
    lines = [line for line in text.splitlines(True) if not re.match(r"^[ \t]*(#|$)", line)]
    exported = {}
    for line in lines:
        key, value = line.split("=", maxsplit=1)
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), line
        assert value.strip() and not re.search(r"\s", value.strip()), line
        exported[key] = value.strip()
    assert {"NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE", "PYTHONPATH", "DREAMER4_PROFILE"} <= set(
        exported
    )
    profiles = load(ROOT / "params.yaml")["profiles"]
    assert exported["DREAMER4_PROFILE"] in profiles

    # where the installed DeepSpeed looks for the file, as docs/cluster.md states it
    runner = Path(importlib.util.find_spec("deepspeed").submodule_search_locations[0])
    tree = ast.parse((runner / "launcher" / "runner.py").read_text())
    assigned = {
        t.id: ast.unparse(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    name = "os.getenv('DS_ENV_FILE', '.deepspeed_env')"
    paths = "[os.path.expanduser('~'), '.']"
    assert assigned["DEEPSPEED_ENVIRONMENT_NAME"] == name
    assert assigned["DEEPSPEED_ENVIRONMENT_PATHS"] == paths
    doc = " ".join(DOC.read_text().split())
    assert "`~/.deepspeed_env` and then `./.deepspeed_env`" in doc and "`DS_ENV_FILE`" in doc


def test_dvc_remote_example_passes_dvcs_config_schema(tmp_path: Path) -> None:
    """The example, beside the project's .dvc/config (as `.dvc/config.local`, which DVC merges
    over it), loads under DVC's own schema, which its commands check on every start."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc_cli.run(repo, "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copy(DVC_EXAMPLE, repo / ".dvc" / "config.local")
    dvc_cli.run(repo, "status")  # raises on a configuration error
    listed = dvc_cli.run(repo, "config", "--list", "--show-origin").stdout.splitlines()
    rows = [(where, *rest.split("=", 1)) for where, rest in (x.split("\t", 1) for x in listed)]
    origin = {key: where for where, key, _ in rows}
    values = {key: value for _, key, value in rows}
    remote = values["core.remote"]
    assert urlparse(values[f"remote.{remote}.url"]).scheme == "s3"
    assert urlparse(values[f"remote.{remote}.url"]).netloc
    assert urlparse(values[f"remote.{remote}.endpointurl"]).scheme in {"http", "https"}
    secrets = {"access_key_id", "secret_access_key", "session_token"}
    assert not {key.rsplit(".", 1)[-1] for key in values if key.startswith("remote.")} & secrets
    # nothing of the project's own settings overridden: each key comes from one file
    project = {key for key, where in origin.items() if where == ".dvc/config"}
    assert project and not project & {k for k, w in origin.items() if w == ".dvc/config.local"}

    # DVC's schema is strict: a misspelt option is rejected
    text = DVC_EXAMPLE.read_text().replace("endpointurl =", "endpoint_url =")
    (repo / ".dvc" / "config.local").write_text(text)
    with pytest.raises(dvc_cli.DvcError, match="extra keys not allowed.*endpoint_url"):
        dvc_cli.run(repo, "status")


def test_training_pods_carry_the_annotations_prometheus_keeps(gpu_tags: dict) -> None:
    scrape = load(INFRA / "k8s" / "prometheus-scrape.yaml")
    (job,) = scrape["scrape_configs"]
    relabel = {tuple(r["source_labels"]): r for r in job["relabel_configs"]}
    keep = relabel[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)]
    assert keep["action"] == "keep"
    port_rule = relabel[("__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port")]
    assert port_rule["target_label"] == "__address__"

    # Prometheus turns annotation names into labels by replacing every other character with _
    def label(annotation: str) -> str:
        return "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", annotation)

    exporter_port = load(INFRA / "prometheus" / "prometheus.yml")["scrape_configs"][0][
        "static_configs"
    ][0]["targets"][0].rsplit(":", 1)[1]
    for name in training_stages():
        annotations = gpu_tags["stages"][name]["pod_template_spec_metadata"]["annotations"]
        by_label = {label(k): v for k, v in annotations.items()}
        assert re.fullmatch(keep["regex"], by_label[keep["source_labels"][0]]), name
        address = f"10.0.0.1:8080;{by_label[port_rule['source_labels'][1]]}"
        match = re.fullmatch(port_rule["regex"], address)
        assert match and match.expand(port_rule["replacement"].replace("$", "\\")) == (
            f"10.0.0.1:{exporter_port}"
        ), name
