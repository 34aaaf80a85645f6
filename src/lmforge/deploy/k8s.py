"""`lmforge deploy k8s`: Kubernetes manifests for the serving app.

Writes one YAML file per object plus a kustomization.yaml, so `kubectl apply -k DIR` installs
the lot and `kustomize` overlays can patch it:

    deployment.yaml   the pods running `lmforge serve`, probes on /healthz and /readyz
    service.yaml      a ClusterIP Service in front of the ready pods
    hpa.yaml          a HorizontalPodAutoscaler (autoscaling/v2) on CPU utilisation
    pdb.yaml          a PodDisruptionBudget: node drains take at most one pod at a time
    pvc.yaml          the registry volume (only with registry_volume="pvc")
"""

# No `from __future__ import annotations`: typer evaluates string annotations on every run.
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from lmforge.errors import LmforgeError

# yaml and lmforge.serve.server (the whole serving stack, SQLAlchemy included) are imported
# where the manifests are built: `lmforge` mounts this module's CLI, and every other command
# (`lmforge registry list`, ...) would otherwise pay for them at startup.

RegistryVolume = Literal["pvc", "hostpath", "emptydir"]
REGISTRY_VOLUMES: tuple[str, ...] = ("pvc", "hostpath", "emptydir")

CONTAINER_PORT_NAME = "http"
# Long enough for kube-proxy and ingress controllers to drop the pod from their endpoints
# before SIGTERM starts the server's drain.
PRESTOP_SLEEP_S = 5
RUN_AS_USER = 10001
# kubectl, kustomize and Helm all read this header; a note in it reaches whoever opens the file.
WRITABLE_REGISTRY_NOTE = """\
# The registry volume is mounted read-write on purpose: the server writes serving.sqlite
# (A/B assignments, feedback, shadow comparisons) and auth.sqlite (API keys) into the
# registry folder. A read-only mount makes the server fail at startup.
"""

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


class DeployError(LmforgeError):
    """The deployment settings are invalid (bad name, image, counts or quantities)."""


# -- validation ------------------------------------------------------------------------------
def _check_name(name: str, what: str = "--name") -> None:
    # Object names become DNS labels (Service names, pod hostnames): RFC 1123, at most 63 chars;
    # 52 leaves room for the suffixes Kubernetes appends to pod names.
    if not name or len(name) > 52 or not _DNS1123_LABEL.match(name):
        raise DeployError(
            f"{what} {name!r} is not a valid Kubernetes name; use 1-52 lowercase letters, "
            "digits and '-', starting and ending with a letter or digit (e.g. lmforge-prod)"
        )


def _check_quantity(value: str, flag: str, example: str) -> None:
    if not isinstance(value, str) or not _QUANTITY.match(value) or _quantity_value(value) <= 0:
        raise DeployError(
            f"{flag} {value!r} is not a positive Kubernetes quantity; use e.g. {example}"
        )


def _quantity_value(value: str) -> float:
    match = _QUANTITY.match(value)
    assert match is not None
    number, suffix = float(match.group(1)), match.group(3) or ""
    return number / 1000 if suffix == "m" else number


def _check_positive(value: int, flag: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DeployError(f"{flag} {value!r}: use a whole number of 1 or more")


def cpu_threads(cpu: str, workers: int) -> int:
    """Intra-op threads per worker for a pod with `cpu` cores (e.g. '500m' -> 1, '4' -> 4).

    A container sees every core of its node, so without this each worker would start one
    thread per node core and be throttled down to its CPU limit.
    """
    return max(1, math.floor(_quantity_value(cpu) / workers))


# -- objects ---------------------------------------------------------------------------------
def k8s_manifests(
    *,
    name: str = "lmforge",
    image: str,
    namespace: str | None = None,
    registry_path: str = "/models/registry",
    replicas: int = 2,
    port: int = 8000,
    workers: int = 1,
    cpu: str = "1",
    memory: str = "1Gi",
    min_replicas: int = 2,
    max_replicas: int = 10,
    target_cpu_percent: int = 70,
    registry_volume: RegistryVolume = "pvc",
    storage: str = "5Gi",
    storage_class: str | None = None,
    host_path: str = "/srv/lmforge/registry",
    seed_path: str = "/opt/lmforge/registry",
    startup_timeout_s: int = 300,
) -> list[dict[str, Any]]:
    """The Kubernetes objects for the service, in apply order (PVC, Deployment, Service, ...).

    `registry_volume` says where the registry comes from: "pvc" a PersistentVolumeClaim
    (ReadWriteMany, shared by all pods), "hostpath" a folder on every node, "emptydir" a
    per-pod copy of a registry baked into the image at `seed_path`.
    """
    _validate(
        name=name,
        image=image,
        namespace=namespace,
        registry_path=registry_path,
        replicas=replicas,
        port=port,
        workers=workers,
        cpu=cpu,
        memory=memory,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        target_cpu_percent=target_cpu_percent,
        registry_volume=registry_volume,
        storage=storage,
        host_path=host_path,
        seed_path=seed_path,
        startup_timeout_s=startup_timeout_s,
    )
    labels = _labels(name)
    selector = {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}
    objects: list[dict[str, Any]] = []
    if registry_volume == "pvc":
        objects.append(_pvc(name, namespace, labels, storage, storage_class))
    objects.append(
        _deployment(
            name=name,
            namespace=namespace,
            labels=labels,
            selector=selector,
            image=image,
            registry_path=registry_path,
            replicas=replicas,
            port=port,
            workers=workers,
            cpu=cpu,
            memory=memory,
            registry_volume=registry_volume,
            host_path=host_path,
            seed_path=seed_path,
            startup_timeout_s=startup_timeout_s,
        )
    )
    objects.append(_service(name, namespace, labels, selector, port))
    objects.append(_hpa(name, namespace, labels, min_replicas, max_replicas, target_cpu_percent))
    objects.append(_pdb(name, namespace, labels, selector))
    return objects


def _validate(**kw: Any) -> None:
    image = kw["image"]
    if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
        raise DeployError(
            f"--image {image!r}: give the container image that has lmforge installed, "
            "e.g. --image registry.example.com/lmforge:0.1.0"
        )
    _check_name(kw["name"])
    if kw["namespace"] is not None:
        _check_name(kw["namespace"], "--namespace")
    for key, flag in (
        ("replicas", "--replicas"),
        ("workers", "--workers"),
        ("min_replicas", "--min-replicas"),
        ("max_replicas", "--max-replicas"),
        ("startup_timeout_s", "--startup-timeout"),
    ):
        _check_positive(kw[key], flag)
    port = kw["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise DeployError(f"--port {port!r}: use a port from 1 to 65535 (e.g. 8000)")
    if kw["min_replicas"] > kw["max_replicas"]:
        raise DeployError(
            f"--min-replicas {kw['min_replicas']} is above --max-replicas {kw['max_replicas']}; "
            "make min <= max"
        )
    if not kw["min_replicas"] <= kw["replicas"] <= kw["max_replicas"]:
        raise DeployError(
            f"--replicas {kw['replicas']} is outside the autoscaling range "
            f"{kw['min_replicas']}..{kw['max_replicas']}; change --replicas or "
            "--min-replicas/--max-replicas"
        )
    target = kw["target_cpu_percent"]
    if isinstance(target, bool) or not isinstance(target, int) or not 1 <= target <= 100:
        raise DeployError(f"--target-cpu {target!r}: use a percentage from 1 to 100 (e.g. 70)")
    _check_quantity(kw["cpu"], "--cpu", "1, 2 or 500m")
    _check_quantity(kw["memory"], "--memory", "1Gi or 512Mi")
    _check_quantity(kw["storage"], "--storage", "5Gi")
    volume = kw["registry_volume"]
    if volume not in REGISTRY_VOLUMES:
        raise DeployError(f"--registry-volume {volume!r}: use one of {', '.join(REGISTRY_VOLUMES)}")
    for key, flag in (
        ("registry_path", "--registry-path"),
        ("host_path", "--host-path"),
        ("seed_path", "--seed-path"),
    ):
        path = kw[key]
        if not isinstance(path, str) or not path.startswith("/") or path.rstrip("/") == "":
            raise DeployError(f"{flag} {path!r}: use an absolute path below / (e.g. /models)")
    if volume == "emptydir" and kw["seed_path"].rstrip("/") == kw["registry_path"].rstrip("/"):
        raise DeployError(
            f"--seed-path {kw['seed_path']!r} is the registry mount itself; the emptyDir would "
            "hide it. Bake the registry into the image at another folder"
        )


def _labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "lmforge",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "server",
        "app.kubernetes.io/part-of": "lmforge",
        "app.kubernetes.io/managed-by": "lmforge",
    }


def _metadata(name: str, namespace: str | None, labels: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": dict(labels)}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def _pvc(
    name: str,
    namespace: str | None,
    labels: dict[str, str],
    storage: str,
    storage_class: str | None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        # Every pod mounts it, possibly on different nodes: needs a ReadWriteMany class
        # (NFS, CephFS, EFS, Filestore...).
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": storage}},
    }
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(f"{name}-registry", namespace, labels),
        "spec": spec,
    }


def _deployment(
    *,
    name: str,
    namespace: str | None,
    labels: dict[str, str],
    selector: dict[str, str],
    image: str,
    registry_path: str,
    replicas: int,
    port: int,
    workers: int,
    cpu: str,
    memory: str,
    registry_volume: str,
    host_path: str,
    seed_path: str,
    startup_timeout_s: int,
) -> dict[str, Any]:
    command = [
        "lmforge",
        "serve",
        "--registry",
        registry_path,
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--json-logs",
        "--set",
        f"serve.backend.threads={cpu_threads(cpu, workers)}",
    ]
    startup_period_s = 5
    container: dict[str, Any] = {
        "name": "server",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "ports": [{"name": CONTAINER_PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        "env": [
            # Writable home for libraries that cache there; the root filesystem is read-only.
            {"name": "HOME", "value": "/tmp"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        "resources": {
            # Requests = limits: Guaranteed QoS, so latency does not depend on noisy
            # neighbours; the HPA's utilisation is measured against the request.
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"cpu": cpu, "memory": memory},
        },
        # The models load before the port opens: the startup probe gives them
        # startup_timeout_s, and only then does the liveness probe start counting.
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": CONTAINER_PORT_NAME},
            "periodSeconds": startup_period_s,
            "timeoutSeconds": 2,
            "failureThreshold": max(1, math.ceil(startup_timeout_s / startup_period_s)),
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": CONTAINER_PORT_NAME},
            "initialDelaySeconds": 0,
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": CONTAINER_PORT_NAME},
            "initialDelaySeconds": 2,
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
            "successThreshold": 1,
        },
        # The Service keeps sending traffic for a moment after the pod is marked for
        # deletion; sleeping first lets the endpoints update before the server drains.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_S)]}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            # Read-write on purpose: serving.sqlite and auth.sqlite live in the registry.
            {"name": "registry", "mountPath": registry_path},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    init_containers: list[dict[str, Any]] = []
    if registry_volume == "pvc":
        volumes.insert(
            0, {"name": "registry", "persistentVolumeClaim": {"claimName": f"{name}-registry"}}
        )
    elif registry_volume == "hostpath":
        volumes.insert(
            0,
            {"name": "registry", "hostPath": {"path": host_path, "type": "DirectoryOrCreate"}},
        )
    else:
        volumes.insert(0, {"name": "registry", "emptyDir": {}})
        # Copy the registry baked into the image to a writable per-pod folder.
        init_containers.append(
            {
                "name": "seed-registry",
                "image": image,
                "command": ["sh", "-c", f'cp -a "{seed_path}/." "{registry_path}/"'],
                "securityContext": container["securityContext"],
                "volumeMounts": [{"name": "registry", "mountPath": registry_path}],
            }
        )
    from lmforge.serve.server import GRACEFUL_SHUTDOWN_S

    pod_spec: dict[str, Any] = {
        # Covers the preStop sleep, the server's drain and a margin for the process to exit.
        "terminationGracePeriodSeconds": PRESTOP_SLEEP_S + GRACEFUL_SHUTDOWN_S + 15,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,  # makes the registry volume group-writable for the server
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # Spread over zones (survives a zone outage) and nodes; ScheduleAnyway still places
        # pods on a single-zone cluster.
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": dict(selector)},
            },
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": dict(selector)},
            },
        ],
        "containers": [container],
        "volumes": volumes,
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, namespace, labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(selector)},
            # Never drop below the wanted count during a rollout: one new pod at a time.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": dict(labels),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def _service(
    name: str,
    namespace: str | None,
    labels: dict[str, str],
    selector: dict[str, str],
    port: int,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, labels),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(selector),
            "ports": [
                {
                    "name": CONTAINER_PORT_NAME,
                    "port": port,
                    "targetPort": CONTAINER_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def _hpa(
    name: str,
    namespace: str | None,
    labels: dict[str, str],
    min_replicas: int,
    max_replicas: int,
    target_cpu_percent: int,
) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(name, namespace, labels),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": target_cpu_percent},
                    },
                }
            ],
            # Scale down slowly: a new pod pays the model load again.
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def _pdb(
    name: str, namespace: str | None, labels: dict[str, str], selector: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(name, namespace, labels),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(selector)}},
    }


# -- files -----------------------------------------------------------------------------------
FILE_NAMES = {
    "PersistentVolumeClaim": "pvc.yaml",
    "Deployment": "deployment.yaml",
    "Service": "service.yaml",
    "HorizontalPodAutoscaler": "hpa.yaml",
    "PodDisruptionBudget": "pdb.yaml",
}


def write_k8s_manifests(out_dir: Path, **kw: Any) -> list[Path]:
    """Write one YAML file per object and a kustomization.yaml listing them; returns the paths.

    Takes the keyword arguments of `k8s_manifests`. Files of earlier runs with other settings
    (a pvc.yaml after switching to hostpath) are left alone but no longer listed.
    """
    objects = k8s_manifests(**kw)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DeployError(f"--out {out_dir}: is a file; pass a folder for the manifests")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for obj in objects:
        path = out_dir / FILE_NAMES[obj["kind"]]
        header = (
            WRITABLE_REGISTRY_NOTE if obj["kind"] in ("Deployment", "PersistentVolumeClaim") else ""
        )
        path.write_text(header + _dump(obj), encoding="utf-8")
        written.append(path)
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [p.name for p in written],
    }
    if kw.get("namespace") is not None:
        kustomization["namespace"] = kw["namespace"]
    path = out_dir / "kustomization.yaml"
    path.write_text(_dump(kustomization), encoding="utf-8")
    written.append(path)
    return written


def _dump(obj: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)


# -- CLI -------------------------------------------------------------------------------------
deploy_app = typer.Typer(
    help="Generate deployment manifests for the serving app.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@deploy_app.command("k8s")
def k8s_command(
    image: Annotated[
        str,
        typer.Option(help="Container image with lmforge installed (required)."),
    ],
    out: Annotated[Path, typer.Option(help="Folder for the YAML files.")] = Path("deploy/k8s"),
    name: Annotated[str, typer.Option(help="Name of every object (DNS-1123).")] = "lmforge",
    namespace: Annotated[
        str | None, typer.Option(help="Namespace for the objects (default: kubectl's).")
    ] = None,
    registry_path: Annotated[
        str, typer.Option(help="Where the registry is mounted in the container.")
    ] = "/models/registry",
    registry_volume: Annotated[
        str, typer.Option(help="pvc (shared, ReadWriteMany), hostpath, or emptydir.")
    ] = "pvc",
    replicas: Annotated[int, typer.Option(help="Pods at first; the HPA takes over.")] = 2,
    port: Annotated[int, typer.Option(help="Container and Service port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server worker processes per pod.")] = 1,
    min_replicas: Annotated[int, typer.Option(help="HPA minimum pods.")] = 2,
    max_replicas: Annotated[int, typer.Option(help="HPA maximum pods.")] = 10,
    cpu: Annotated[str, typer.Option(help="CPU per pod (request = limit), e.g. 1 or 500m.")] = "1",
    memory: Annotated[str, typer.Option(help="Memory per pod (request = limit).")] = "1Gi",
    target_cpu: Annotated[
        int, typer.Option("--target-cpu", help="HPA target CPU utilisation, percent.")
    ] = 70,
    storage: Annotated[str, typer.Option(help="PVC size (with --registry-volume pvc).")] = "5Gi",
    storage_class: Annotated[
        str | None, typer.Option(help="PVC storage class (must support ReadWriteMany).")
    ] = None,
    host_path: Annotated[
        str, typer.Option(help="Registry folder on each node (with --registry-volume hostpath).")
    ] = "/srv/lmforge/registry",
    seed_path: Annotated[
        str,
        typer.Option(help="Registry baked into the image, copied per pod (emptydir)."),
    ] = "/opt/lmforge/registry",
    startup_timeout: Annotated[
        int, typer.Option("--startup-timeout", help="Seconds a pod may take to load the models.")
    ] = 300,
) -> None:
    """Write Deployment, Service, HPA, PDB (and PVC) YAML plus a kustomization.yaml."""
    paths = write_k8s_manifests(
        out,
        name=name,
        image=image,
        namespace=namespace,
        registry_path=registry_path,
        registry_volume=registry_volume,
        replicas=replicas,
        port=port,
        workers=workers,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu=cpu,
        memory=memory,
        target_cpu_percent=target_cpu,
        storage=storage,
        storage_class=storage_class,
        host_path=host_path,
        seed_path=seed_path,
        startup_timeout_s=startup_timeout,
    )
    for path in paths:
        typer.echo(f"wrote {path}")
    typer.echo(f"apply with: kubectl apply -k {out}")
