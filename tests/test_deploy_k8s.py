"""`lmforge deploy k8s`: the generated Kubernetes objects, their files and the CLI."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import typer
import yaml
from typer.testing import CliRunner

from lmforge.deploy.k8s import (
    DeployError,
    cpu_threads,
    deploy_app,
    k8s_manifests,
    write_k8s_manifests,
)
from lmforge.serve.server import GRACEFUL_SHUTDOWN_S

IMAGE = "registry.example.com/lmforge:0.1.0"
EXPECTED_KINDS = {
    "PersistentVolumeClaim": "v1",
    "Deployment": "apps/v1",
    "Service": "v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
}


def _by_kind(objects: list[dict]) -> dict[str, dict]:
    kinds = [o["kind"] for o in objects]
    assert len(kinds) == len(set(kinds))
    return {o["kind"]: o for o in objects}


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_objects_have_the_right_kinds_and_api_versions():
    objects = _by_kind(k8s_manifests(image=IMAGE))
    assert {k: o["apiVersion"] for k, o in objects.items()} == EXPECTED_KINDS
    for obj in objects.values():
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "lmforge"
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "lmforge"
        assert "namespace" not in obj["metadata"]
    # Without a PVC there is nothing to claim.
    hostpath = _by_kind(k8s_manifests(image=IMAGE, registry_volume="hostpath"))
    assert "PersistentVolumeClaim" not in hostpath


def test_selectors_match_the_pod_labels():
    objects = _by_kind(k8s_manifests(name="clf-prod", image=IMAGE, namespace="ml"))
    deployment = objects["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert objects["Service"]["spec"]["selector"] == selector
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == selector
    zones = [
        c["topologyKey"]
        for c in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    ]
    assert "topology.kubernetes.io/zone" in zones
    assert all(o["metadata"]["namespace"] == "ml" for o in objects.values())
    assert all(o["metadata"]["name"].startswith("clf-prod") for o in objects.values())


def test_container_runs_the_server_with_probes_on_its_port():
    objects = _by_kind(
        k8s_manifests(image=IMAGE, port=9000, workers=2, cpu="4", memory="2Gi", replicas=3)
    )
    deployment = objects["Deployment"]
    container = _container(deployment)
    assert deployment["spec"]["replicas"] == 3
    assert container["image"] == IMAGE
    command = container["command"]
    assert command[:2] == ["lmforge", "serve"]
    assert command[command.index("--registry") + 1] == "/models/registry"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "9000"
    assert command[command.index("--workers") + 1] == "2"
    assert "--json-logs" in command
    assert command[command.index("--set") + 1] == "serve.backend.threads=2"  # 4 cores / 2

    (port,) = container["ports"]
    assert port["containerPort"] == 9000
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        http_get = container[probe]["httpGet"]
        assert http_get["path"] == path
        assert http_get["port"] in (port["name"], port["containerPort"])
    # The startup probe, not a liveness delay, covers model loading (300 s by default).
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert container["readinessProbe"]["failureThreshold"] >= 1

    resources = container["resources"]
    assert resources["requests"] == {"cpu": "4", "memory": "2Gi"}
    assert resources["limits"] == {"cpu": "4", "memory": "2Gi"}

    service_port = objects["Service"]["spec"]["ports"][0]
    assert service_port["port"] == 9000 and service_port["targetPort"] == port["name"]
    assert objects["Service"]["spec"]["type"] == "ClusterIP"


def test_pod_shuts_down_gracefully_and_runs_as_non_root():
    deployment = _by_kind(k8s_manifests(image=IMAGE))["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + GRACEFUL_SHUTDOWN_S + 5
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The server writes serving.sqlite and auth.sqlite into the registry: never read-only.
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "registry"]
    assert mount["mountPath"] == "/models/registry" and not mount.get("readOnly", False)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "registry"]
    assert volume["persistentVolumeClaim"]["claimName"] == "lmforge-registry"


def test_registry_volume_kinds():
    hostpath = _by_kind(k8s_manifests(image=IMAGE, registry_volume="hostpath", host_path="/srv/r"))
    pod = hostpath["Deployment"]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "registry"]
    assert volume["hostPath"]["path"] == "/srv/r"

    seeded = _by_kind(k8s_manifests(image=IMAGE, registry_volume="emptydir", seed_path="/opt/r"))
    pod = seeded["Deployment"]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "registry"]
    assert volume == {"name": "registry", "emptyDir": {}}
    (init,) = pod["initContainers"]
    assert init["image"] == IMAGE and "/opt/r/." in init["command"][-1]
    assert init["volumeMounts"][0]["mountPath"] == "/models/registry"


def test_hpa_targets_the_deployment():
    objects = _by_kind(
        k8s_manifests(
            name="clf",
            image=IMAGE,
            replicas=3,
            min_replicas=3,
            max_replicas=7,
            target_cpu_percent=55,
        )
    )
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": objects["Deployment"]["apiVersion"],
        "kind": "Deployment",
        "name": objects["Deployment"]["metadata"]["name"],
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 7)
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 55}
    # Utilisation is relative to the CPU request, so the pod must have one.
    assert _container(objects["Deployment"])["resources"]["requests"]["cpu"]


def test_files_parse_back_to_the_same_objects(tmp_path):
    out = tmp_path / "k8s"
    paths = write_k8s_manifests(out, image=IMAGE, namespace="ml")
    objects = k8s_manifests(image=IMAGE, namespace="ml")
    assert [p.name for p in paths] == [
        "pvc.yaml",
        "deployment.yaml",
        "service.yaml",
        "hpa.yaml",
        "pdb.yaml",
        "kustomization.yaml",
    ]
    parsed = [doc for p in paths[:-1] for doc in yaml.safe_load_all(p.read_text())]
    assert parsed == objects
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == [p.name for p in paths[:-1]]
    assert kustomization["namespace"] == "ml"
    assert "serving.sqlite" in (out / "deployment.yaml").read_text().split("apiVersion")[0]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_the_folder(tmp_path):
    write_k8s_manifests(tmp_path, image=IMAGE)
    built = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(built.stdout))
    assert kinds == sorted(EXPECTED_KINDS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image": ""}, r"--image '': give the container image"),
        ({"image": "   "}, r"--image"),
        ({"image": IMAGE, "name": "My_App"}, r"--name 'My_App' is not a valid Kubernetes name"),
        ({"image": IMAGE, "name": "-x"}, r"not a valid Kubernetes name"),
        ({"image": IMAGE, "replicas": 0}, r"--replicas 0: use a whole number of 1 or more"),
        (
            {"image": IMAGE, "min_replicas": 5, "max_replicas": 3},
            r"--min-replicas 5 is above --max-replicas 3",
        ),
        ({"image": IMAGE, "replicas": 1}, r"--replicas 1 is outside the autoscaling range 2..10"),
        ({"image": IMAGE, "cpu": "lots"}, r"--cpu 'lots' is not a positive Kubernetes quantity"),
        ({"image": IMAGE, "memory": "0Gi"}, r"--memory '0Gi'"),
        ({"image": IMAGE, "port": 70000}, r"--port 70000"),
        ({"image": IMAGE, "target_cpu_percent": 0}, r"--target-cpu 0"),
        ({"image": IMAGE, "registry_volume": "s3"}, r"--registry-volume 's3': use one of pvc"),
        ({"image": IMAGE, "registry_path": "models"}, r"--registry-path 'models'"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, message):
    with pytest.raises(DeployError, match=message):
        k8s_manifests(**kwargs)


def test_cpu_threads():
    assert cpu_threads("500m", 1) == 1
    assert cpu_threads("4", 2) == 2
    assert cpu_threads("2.5", 1) == 2


def _cli() -> typer.Typer:
    # The sub-app as lmforge.cli mounts it: `lmforge deploy k8s ...`.
    root = typer.Typer()
    root.add_typer(deploy_app, name="deploy")

    @root.callback()
    def main() -> None:
        pass

    return root


def test_cli_writes_the_files(tmp_path):
    out = tmp_path / "manifests"
    result = CliRunner().invoke(
        _cli(),
        [
            "deploy",
            "k8s",
            "--image",
            IMAGE,
            "--out",
            str(out),
            "--name",
            "clf",
            "--replicas",
            "3",
            "--min-replicas",
            "2",
            "--max-replicas",
            "6",
            "--cpu",
            "2",
            "--memory",
            "3Gi",
            "--target-cpu",
            "60",
            "--port",
            "8080",
            "--workers",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"kubectl apply -k {out}" in result.output
    objects = _by_kind(
        [doc for p in sorted(out.glob("*.yaml")) for doc in yaml.safe_load_all(p.read_text())]
    )
    assert objects["Deployment"]["metadata"]["name"] == "clf"
    assert objects["Deployment"]["spec"]["replicas"] == 3
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    container = _container(objects["Deployment"])
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "3Gi"}
    assert container["ports"][0]["containerPort"] == 8080


def test_cli_bad_input_exits_2_with_one_error_line(tmp_path, monkeypatch, capsys):
    from lmforge import cli

    # Mounted on the real CLI for this test only, so lmforge's main() turns the error into
    # its `error:` line; a fresh Typer group keeps the shared `cli.app` untouched.
    root = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    root.add_typer(deploy_app, name="deploy")

    @root.callback()
    def main() -> None:
        pass

    monkeypatch.setattr(cli, "app", root)
    out = tmp_path / "nothing"
    code = cli.main(["deploy", "k8s", "--image", IMAGE, "--out", str(out), "--replicas", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: --replicas 0: use a whole number of 1 or more"]
    assert not out.exists()  # nothing written for a rejected config

    code = cli.main(["deploy", "k8s", "--out", str(out)])  # --image missing
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and "--image" in err[0]
