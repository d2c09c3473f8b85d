"""The deployment templates (infra/):

- both kustomizations render valid Kubernetes 1.37 manifests; every long-running container has
  probes, resources and a hardened security context; only the Prefect worker mounts a
  service-account token; NetworkPolicies deny by default and let only the pipeline's pods reach
  the Dask scheduler, while the connections the pipeline needs stay open;
- the flow-run Jobs the Prefect worker creates (the work pool's base job template) are hardened
  the same way and carry the label the NetworkPolicies select them by;
- checkov reports no failed check on infra/ (Kubernetes, kustomize, Dockerfiles, Terraform), and
  every skip carries its reason; the Terraform files are `terraform fmt` clean;
- each image's pip steps, replayed from its Dockerfile in a fresh venv of the image's Python,
  install what its pods import: the Triton image runs the model backend's initialize() and
  execute(), the pipeline image also imports the flows and the Prefect Kubernetes worker;
- the Prefect deployments file names flows that exist, with schedules and parameters they accept.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import hashlib
import inspect
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

BIN = Path(sys.executable).parent
INFRA = ROOT / "infra"
DOCKER = INFRA / "docker"
NAMESPACE = "wvm"
OVERLAYS = ["base", "overlays/gpu"]
CACHE = Path(os.environ.get("WVM_INFRA_CACHE", Path.home() / ".cache" / "wvm-infra"))
CHECKOV_VENV = Path(os.environ.get("WVM_CHECKOV_VENV", Path.home() / ".cache" / "wvm-checkov"))
CHECKOV_VERSION = "3.3.30"

# Pods that call the Kubernetes API, and so may mount a service-account token.
NEEDS_KUBERNETES_API = {"prefect-worker"}
# The checks infra/ skips, each with its reason inline in the file (checked below): adding a
# skip means adding it here too, on purpose.
ALLOWED_SKIPS = {
    "CKV_K8S_43",  # image digests: the operator builds the images, digests go in with kustomize
    "CKV_K8S_38",  # service-account token: only the Prefect worker, which creates Jobs
    "CKV_DOCKER_2",  # HEALTHCHECK: only the multi-role pipeline image (Kubernetes probes each role)
    "CKV_GCP_62",  # access logging: only the access-log bucket itself
}
# The Python each base image runs the project on. tritonserver: NVIDIA's release notes (Ubuntu
# 24.04 with Python 3.12 since the 24.xx Ubuntu 24.04 images; 25.10 is built on CUDA 13.0), and
# triton.Dockerfile asserts it at build time; a new base image needs its entry here.
BASE_IMAGE_PYTHON = {
    "python:3.11.14-slim-bookworm": "3.11",
    "nvcr.io/nvidia/tritonserver:25.10-py3": "3.12",
}
# Package indexes a Dockerfile names that this machine cannot reach; the replay leaves the
# option out and pip takes the same pinned version from this machine's configured indexes
# (torch 2.13.0: the CPU wheel on disk for Python 3.11).
UNREACHABLE_INDEXES = {"https://download.pytorch.org/whl/cpu"}


# --------------------------------------------------------------------------- rendering


@functools.cache
def rendered(overlay: str) -> str:
    kubectl = shutil.which("kubectl", path=str(BIN)) or "kubectl"
    return subprocess.run([kubectl, "kustomize", str(INFRA / "k8s" / overlay)], capture_output=True, text=True, check=True).stdout


def docs_of(overlay: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(rendered(overlay)) if d]


def workloads(docs: list[dict]) -> dict[str, dict]:
    """name -> pod template ({metadata, spec}) of every workload."""
    pods = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            pods[d["metadata"]["name"]] = d["spec"]["template"]
        elif d["kind"] == "CronJob":
            pods[d["metadata"]["name"]] = d["spec"]["jobTemplate"]["spec"]["template"]
        elif d["kind"] == "Pod":
            pods[d["metadata"]["name"]] = {"metadata": d["metadata"], "spec": d["spec"]}
    return pods


def flow_run_job() -> dict:
    """The Job the Prefect Kubernetes worker creates for a nightly-k8s flow run: the work pool's
    base job template filled with the deployment's job variables, as prefect-kubernetes does
    (env as a list, command split, its labels added to the pod's)."""
    from prefect.utilities.templating import apply_values

    template = json.loads((INFRA / "prefect" / "base-job-template.json").read_text())
    deployment = next(d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"] if d["name"] == "nightly-k8s")
    values = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    values.update(deployment["work_pool"]["job_variables"])
    values.update(
        image="registry.example.com/wvm/pipeline:0.1.0",
        name="nightly-run",
        command="prefect flow-run execute",
        labels={"prefect.io/flow-run-name": "nightly-run", "prefect.io/deployment-name": "nightly-k8s"},
        annotations={},
    )
    job = apply_values(template["job_configuration"]["job_manifest"], values)
    pod = job["spec"]["template"]
    # prefect-kubernetes insists on these two in the pod spec (its default template has them
    # there); they are Job fields, which Kubernetes ignores in a pod spec
    assert (pod["spec"].pop("completions"), pod["spec"].pop("parallelism")) == (1, 1)
    container = pod["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": str(v)} for k, v in container["env"].items()]
    container["args"] = shlex.split(container["args"])
    pod.setdefault("metadata", {}).setdefault("labels", {}).update(values["labels"])
    job["metadata"]["labels"] = values["labels"]
    del job["metadata"]["annotations"], job["metadata"]["generateName"]
    job["metadata"]["name"] = "nightly-run-x"
    return job


def service_accounts(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}


def mounts_token(pod_spec: dict, accounts: dict[str, dict]) -> bool:
    """Whether Kubernetes mounts a service-account token into the pod (the pod's setting wins
    over its service account's; both default to true)."""
    if "automountServiceAccountToken" in pod_spec:
        return pod_spec["automountServiceAccountToken"]
    account = accounts.get(pod_spec.get("serviceAccountName", "default"), {})
    return account.get("automountServiceAccountToken", True)


def kubernetes_validate(docs: list[dict], tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    check = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(manifest)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_renders_valid_manifests(overlay, tmp_path):
    docs = docs_of(overlay)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "wvm-triton") in kinds and ("Service", "wvm-dask-scheduler") in kinds
    manifest = tmp_path / "all.yaml"
    manifest.write_text(rendered(overlay))
    check = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(manifest)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    triton = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "wvm-triton")
    args = triton["spec"]["template"]["spec"]["containers"][0]["args"]
    assert ("--model-config-name=gpu" in args) == (overlay == "overlays/gpu")
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in docs if d["kind"] != "Namespace")


# --------------------------------------------------------------------------- pod hardening


def check_pod_hardening(name: str, pod: dict, accounts: dict[str, dict], probes: bool) -> list[str]:
    """What is wrong with one pod template; [] when nothing."""
    spec, problems = pod["spec"], []
    pod_sc = spec.get("securityContext", {})
    if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: pod seccompProfile is not RuntimeDefault")
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        problems.append(f"{name}: uses the host's namespaces")
    if mounts_token(spec, accounts) != (name in NEEDS_KUBERNETES_API):
        problems.append(f"{name}: mounts a service-account token: {mounts_token(spec, accounts)}, needs one: {name in NEEDS_KUBERNETES_API}")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec.get("initContainers", []) + spec["containers"]:
        where, sc = f"{name}/{c['name']}", c.get("securityContext", {})
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
            problems.append(f"{where}: runAsNonRoot is not true")
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        if uid is None or uid < 10000:
            problems.append(f"{where}: runAsUser {uid} (want a fixed UID >= 10000, the images' USER)")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: root filesystem is writable")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
            problems.append(f"{where}: capabilities are not dropped (ALL, none added)")
        for mount in c.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            if not mount.get("readOnly") and "emptyDir" not in volume:
                problems.append(f"{where}: writable mount {mount['mountPath']} is not an emptyDir")
        if not any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])):
            problems.append(f"{where}: no writable /tmp (emptyDir) under a read-only root")
        resources = c.get("resources", {})
        for kind in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(resources.get(kind) or {}):
                problems.append(f"{where}: no cpu and memory {kind}")
        if probes:
            for probe in ("livenessProbe", "readinessProbe"):
                if not any(k in c.get(probe, {}) for k in ("httpGet", "tcpSocket", "exec", "grpc")):
                    problems.append(f"{where}: no {probe}")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_hardened_and_probed(overlay):
    docs = docs_of(overlay)
    pods, accounts = workloads(docs), service_accounts(docs)
    assert set(pods) == {"wvm-triton", "wvm-dask-scheduler", "wvm-dask-worker", "prefect-worker"}
    problems = [p for name, pod in pods.items() for p in check_pod_hardening(name, pod, accounts, probes=True)]
    assert not problems, "\n".join(problems)
    # the one pod with a token can do what it needs the token for, and no more than in its namespace
    worker = pods["prefect-worker"]["spec"]["serviceAccountName"]
    bindings = [d for d in docs if d["kind"] == "RoleBinding" and any(s["name"] == worker for s in d["subjects"])]
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    rules = [r for b in bindings if b["roleRef"]["kind"] == "Role" for r in roles[b["roleRef"]["name"]]["rules"]]
    assert any("batch" in r["apiGroups"] and "jobs" in r["resources"] and "create" in r["verbs"] for r in rules)
    assert not any(d["kind"] in ("ClusterRole", "ClusterRoleBinding") for d in docs)
    # the namespace enforces the restricted Pod Security Standard
    (namespace,) = [d for d in docs if d["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_pod_uid_is_the_images_user():
    uids = {user_of(dockerfile)[0] for dockerfile in DOCKER.glob("*.Dockerfile")}
    pods = workloads(docs_of("base"))
    assert {pod["spec"]["securityContext"]["runAsUser"] for pod in pods.values()} == uids == {flow_run_job()["spec"]["template"]["spec"]["securityContext"]["runAsUser"]}


def test_flow_run_jobs_are_hardened_and_labelled_for_the_network_policies(tmp_path):
    job = flow_run_job()
    pod = job["spec"]["template"]
    accounts = service_accounts(docs_of("base"))
    problems = check_pod_hardening("flow-run", pod, accounts, probes=False)  # a run-to-completion Job has nothing to probe
    assert not problems, "\n".join(problems)
    assert pod["metadata"]["labels"]["app"] == "wvm-flow-run"
    assert job["metadata"]["namespace"] == NAMESPACE and pod["spec"]["serviceAccountName"] in accounts
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "4", "memory": "16Gi"}  # prefect.yaml's job variables
    kubernetes_validate([job], tmp_path)


# --------------------------------------------------------------------------- network policies


@dataclass(frozen=True)
class Peer:
    """A pod as NetworkPolicies see it."""

    app: str
    labels: tuple = ()
    namespace: str = NAMESPACE
    ip: str = "10.8.0.10"  # some pod address: pods are never on the public Internet

    @property
    def label_dict(self) -> dict:
        return dict(self.labels)

    @property
    def namespace_labels(self) -> dict:
        return {"kubernetes.io/metadata.name": self.namespace}


def selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and key in labels and labels[key] in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def peer_matches(rule_peer: dict, policy_namespace: str, other: Peer) -> bool:
    if "ipBlock" in rule_peer:
        block = rule_peer["ipBlock"]
        ip = ipaddress.ip_address(other.ip)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(ip in ipaddress.ip_network(e) for e in block.get("except", []))
    if "namespaceSelector" in rule_peer and not selects(rule_peer["namespaceSelector"], other.namespace_labels):
        return False
    if "namespaceSelector" not in rule_peer and other.namespace != policy_namespace:
        return False
    return "podSelector" not in rule_peer or selects(rule_peer["podSelector"], other.label_dict)


def port_matches(rule: dict, port: int, protocol: str, named: dict[str, int]) -> bool:
    if not rule.get("ports"):
        return True
    for p in rule["ports"]:
        number = named.get(p["port"], p["port"]) if "port" in p else None
        if p.get("protocol", "TCP") == protocol and (number is None or number == port or (p.get("endPort") and number <= port <= p["endPort"])):
            return True
    return False


def allowed(policies: list[dict], direction: str, pod: Peer, other: Peer, port: int, protocol: str = "TCP", named=None) -> bool:
    """Whether `pod`'s policies let traffic through in `direction` ('ingress': from `other` to
    `pod`'s port; 'egress': from `pod` to `other`'s port)."""
    kind, key, peers_key = ("Ingress", "ingress", "from") if direction == "ingress" else ("Egress", "egress", "to")
    mine = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and selects(p["spec"]["podSelector"], pod.label_dict)
        and kind in p["spec"].get("policyTypes", ["Ingress"] + (["Egress"] if "egress" in p["spec"] else []))
    ]
    if not mine:
        return True  # not isolated
    for policy in mine:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(peer_matches(x, policy["metadata"]["namespace"], other) for x in peers)) and port_matches(rule, port, protocol, named or {}):
                return True
    return False


def connects(policies, source: Peer, target: Peer, port: int, protocol: str = "TCP") -> bool:
    return allowed(policies, "egress", source, target, port, protocol) and allowed(policies, "ingress", target, source, port, protocol)


def pipeline_peers(overlay: str) -> dict[str, Peer]:
    peers = {name: Peer(name, tuple(sorted(pod["metadata"]["labels"].items()))) for name, pod in workloads(docs_of(overlay)).items()}
    labels = flow_run_job()["spec"]["template"]["metadata"]["labels"]
    peers["flow-run"] = Peer("flow-run", tuple(sorted(labels.items())))
    return peers


def policies_of(overlay: str) -> list[dict]:
    return [d for d in docs_of(overlay) if d["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_cover_every_pod(overlay):
    policies = policies_of(overlay)
    default_deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {} and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"} and not p["spec"].get("ingress") and not p["spec"].get("egress")
    ]
    assert default_deny, "no default-deny NetworkPolicy in the namespace"
    for name, peer in pipeline_peers(overlay).items():
        own = [p for p in policies if p["spec"]["podSelector"] != {} and selects(p["spec"]["podSelector"], peer.label_dict)]
        assert own, f"{name} has no NetworkPolicy of its own"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_pipelines_pods_reach_the_dask_scheduler(overlay):
    policies, peers = policies_of(overlay), pipeline_peers(overlay)
    scheduler = peers["wvm-dask-scheduler"]
    strangers = [
        Peer("intruder", (("app", "intruder"),)),
        Peer("unlabelled"),
        Peer("flow-run elsewhere", peers["flow-run"].labels, namespace="default"),
        Peer("outside", ip="34.1.2.3"),
    ]
    for port in (8786, 8787):  # the scheduler's protocol, and the dashboard (reach it with kubectl port-forward)
        may = {p.app for p in [*peers.values(), *strangers] if p is not scheduler and allowed(policies, "ingress", scheduler, p, port)}
        assert may == ({"wvm-dask-worker", "flow-run"} if port == 8786 else set()), (port, may)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_keep_the_pipelines_connections_open(overlay):
    policies, p = policies_of(overlay), pipeline_peers(overlay)
    needed = [
        ("flow-run", "wvm-dask-scheduler", 8786),
        ("flow-run", "wvm-dask-worker", 8788),
        ("flow-run", "wvm-triton", 8001),
        ("wvm-dask-worker", "wvm-dask-scheduler", 8786),
        ("wvm-dask-worker", "wvm-dask-worker", 8788),
        ("wvm-dask-worker", "wvm-triton", 8001),
        ("wvm-dask-scheduler", "wvm-dask-worker", 8788),
        ("wvm-dask-scheduler", "wvm-dask-worker", 8789),
    ]
    for source, target, port in needed:
        assert connects(policies, p[source], p[target], port), f"{source} -> {target}:{port} is blocked"
    denied = [
        ("wvm-triton", "wvm-dask-scheduler", 8786),
        ("prefect-worker", "wvm-dask-scheduler", 8786),
        ("wvm-dask-scheduler", "wvm-triton", 8001),
        ("wvm-triton", "wvm-dask-worker", 8788),
        ("prefect-worker", "wvm-triton", 8001),
    ]
    for source, target, port in denied:
        assert not connects(policies, p[source], p[target], port), f"{source} -> {target}:{port} is open"
    dns = Peer("kube-dns", (("k8s-app", "kube-dns"),), namespace="kube-system")
    prefect_api = Peer("prefect-server", (("app", "prefect-server"),), namespace="prefect")
    gcs = Peer("storage.googleapis.com", ip="142.250.1.207")
    metadata = Peer("metadata", ip="169.254.169.254")
    for name, peer in p.items():
        assert allowed(policies, "egress", peer, dns, 53, "UDP"), f"{name} cannot resolve names"
        may_gcs = allowed(policies, "egress", peer, gcs, 443) and allowed(policies, "egress", peer, metadata, 80)
        assert may_gcs == (name in ("flow-run", "wvm-dask-worker")), f"{name}: reaches GCS: {may_gcs}"
        assert allowed(policies, "egress", peer, prefect_api, 4200) == (name in ("flow-run", "prefect-worker")), name


# --------------------------------------------------------------------------- checkov, terraform


@contextlib.contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def checkov() -> Path:
    """checkov in its own venv (its dependencies would clash with the project's): installed on
    first use, pinned."""
    exe = CHECKOV_VENV / "bin" / "checkov"

    def version() -> str:
        if not exe.exists():
            return ""
        return subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout.strip()

    if version() != CHECKOV_VERSION:
        with locked(CHECKOV_VENV.with_name(CHECKOV_VENV.name + ".lock")):
            if version() != CHECKOV_VERSION:
                if not (CHECKOV_VENV / "bin" / "python").exists():
                    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(CHECKOV_VENV)], check=True)
                pip = [str(CHECKOV_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
                subprocess.run([*pip, f"checkov=={CHECKOV_VERSION}"], check=True, timeout=1800)
    assert version() == CHECKOV_VERSION
    return exe


@pytest.mark.slow
def test_checkov_finds_nothing_in_infra():
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # kubectl for checkov's kustomize runner
    run = subprocess.run([str(checkov()), "-d", "infra", "-o", "json", "--skip-download"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode in (0, 1), run.stderr[-3000:]
    reports = json.loads(run.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_type = {r["check_type"]: r for r in reports if "check_type" in r}
    for framework in ("kubernetes", "kustomize", "dockerfile", "terraform"):
        assert framework in by_type and by_type[framework]["summary"]["passed"] > 0, f"checkov did not check {framework}: {sorted(by_type)}"
    failed = [(f["check_id"], f["resource"], f["file_path"]) for r in by_type.values() for f in r["results"]["failed_checks"]]
    assert not failed, "\n".join(map(str, failed))
    errors = [e for r in by_type.values() for e in r["results"].get("parsing_errors", [])]
    assert not errors, errors
    skipped = [(s["check_id"], s["resource"], (s.get("check_result") or {}).get("suppress_comment", "")) for r in by_type.values() for s in r["results"]["skipped_checks"]]
    assert {s[0] for s in skipped} <= ALLOWED_SKIPS, skipped
    assert all(len(reason.strip()) >= 20 for _, _, reason in skipped), skipped  # each skip says why


def test_terraform_is_formatted():
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not installed here (`terraform fmt` needs only the binary, no providers)")
    run = subprocess.run([terraform, "fmt", "-check", "-recursive", "-diff", str(INFRA / "terraform")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(p.name for p in (INFRA / "terraform").glob("*.tf")) == ["gke.tf", "iam.tf", "outputs.tf", "registry.tf", "storage.tf", "variables.tf", "versions.tf"]


# --------------------------------------------------------------------------- Dockerfiles


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    out, buffer = [], ""
    for line in dockerfile.read_text().splitlines():
        text = line.strip()
        if text.startswith("#") or (not text and not buffer):
            continue
        if text.endswith("\\"):
            buffer += text[:-1] + " "
            continue
        buffer += text
        if buffer.strip():
            name, _, rest = buffer.strip().partition(" ")
            out.append((name.upper(), rest.strip()))
        buffer = ""
    return out


def base_image(dockerfile: Path) -> str:
    (base,) = [[t for t in rest.split() if not t.startswith("--")][0] for name, rest in instructions(dockerfile) if name == "FROM"]
    return base  # one stage per Dockerfile: the replay below knows no multi-stage builds


def user_of(dockerfile: Path) -> tuple[int, int]:
    users = [rest for name, rest in instructions(dockerfile) if name == "USER"]
    assert users, f"{dockerfile.name}: no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and gid.isdigit(), f"{dockerfile.name}: USER {users[-1]} (numeric uid:gid, so that Kubernetes can check runAsNonRoot)"
    return int(uid), int(gid)


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        glob_ = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/?|\*|\?)", glob_):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        patterns.append((negate, re.compile(regex + "(?:/.*)?")))  # a matched directory takes its contents along
    return patterns


def in_build_context(relative: str) -> bool:
    """Docker's rule: the last matching .dockerignore line decides."""
    keep = True
    for negate, regex in dockerignore_patterns():
        if regex.fullmatch(relative):
            keep = negate
    return keep


def copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for name, rest in instructions(dockerfile):
        if name in ("COPY", "ADD"):
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            sources += args[:-1]
    return sources


@pytest.mark.parametrize("dockerfile", sorted(p.name for p in DOCKER.glob("*.Dockerfile")))
def test_images_are_pinned_non_root_and_checked(dockerfile):
    path = DOCKER / dockerfile
    base = base_image(path)
    assert base in BASE_IMAGE_PYTHON, f"{dockerfile}: base image {base}: add the Python it ships to BASE_IMAGE_PYTHON"
    assert re.search(r":\d[\w.-]*$", base) or "@sha256:" in base, f"{dockerfile}: base image {base} is not pinned to a version"
    from packaging.specifiers import SpecifierSet

    requires = re.search(r'^requires-python = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert f"{BASE_IMAGE_PYTHON[base]}.0" in SpecifierSet(requires), f"{dockerfile}: the project ({requires}) does not support the image's Python {BASE_IMAGE_PYTHON[base]}"
    uid, gid = user_of(path)
    assert uid >= 10000 and gid > 0
    steps = instructions(path)
    last_run = max(i for i, (name, _) in enumerate(steps) if name == "RUN")
    assert max(i for i, (name, _) in enumerate(steps) if name == "USER") > last_run, f"{dockerfile}: USER must come after the last RUN"
    skip = re.search(r"checkov:skip=CKV_DOCKER_2:(.+)", path.read_text())
    assert any(name == "HEALTHCHECK" and rest.upper() != "NONE" for name, rest in steps) or (skip and len(skip.group(1).strip()) >= 20)
    for source in copy_sources(path):
        assert (ROOT / source).exists() and in_build_context(source), f"{dockerfile}: COPY {source}: not in the build context"


def test_build_context_leaves_out_local_state():
    for path in [".venv", ".git", "data", "runs", ".pytest_cache", ".ruff_cache", "wvm/__pycache__", "pipelines/__pycache__/x.pyc", "wvm.egg-info", "tests"]:
        assert not in_build_context(path), f"{path} would be sent to the Docker daemon"
    for path in ["pyproject.toml", "README.md", "wvm/model.py", "wvm/checkpoints/default/model.safetensors", "model_repository/wvm/1/model.py", "infra/docker/triton-requirements.txt"]:
        assert in_build_context(path), path


# --------------------------------------------------------------------------- image replays


@dataclass
class Replay:
    """A Dockerfile's Python environment rebuilt here: its COPY steps into `root` (standing for
    the image's /), its pip steps into `venv`, made with the image's Python version."""

    dockerfile: Path
    venv: Path
    root: Path
    env: dict
    left_out: list[str] = field(default_factory=list)  # what the replay did not do, and why

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def image_path(self, path: str) -> Path:
        return self.root / path.lstrip("/")


def interpreter(version: str) -> str:
    """A Python `version` (major.minor) interpreter on this machine."""
    candidates = sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / f"{version}.*" / "bin" / f"python{version}")))
    candidates += [c for c in [shutil.which(f"python{version}")] if c]
    for candidate in candidates:
        probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True)
        if probe.stdout.strip() == version:
            return candidate
    raise AssertionError(f"no Python {version} here (pyenv install {version}): the image replays need it")


def pip_steps(steps: list[tuple[str, str]]):
    """Each RUN's `&&`-joined commands, with the WORKDIR and ENV in force."""
    workdir, env = "/", {}
    for name, rest in steps:
        if name == "WORKDIR":
            workdir = str(Path(workdir) / rest)
        elif name == "ENV":
            tokens = shlex.split(rest)
            pairs = [t.split("=", 1) for t in tokens] if "=" in tokens[0] else [[tokens[0], " ".join(tokens[1:])]]
            env.update({k: v for k, v in pairs})
        elif name == "RUN":
            for command in re.split(r"\s*&&\s*", rest):
                yield workdir, dict(env), shlex.split(command)


def stage_copies(steps, root: Path) -> None:
    """Do the COPY steps into `root`, leaving out what .dockerignore leaves out."""
    workdir = "/"
    for name, rest in steps:
        if name == "WORKDIR":
            workdir = str(Path(workdir) / rest)
        if name not in ("COPY", "ADD"):
            continue
        args = [a for a in shlex.split(rest) if not a.startswith("--")]
        *sources, dest = args
        target = root / str(Path(workdir) / dest).lstrip("/")
        for source in sources:
            src = ROOT / source
            into = target / src.name if (dest.endswith("/") or len(sources) > 1) and src.is_file() else target
            if src.is_dir():
                shutil.rmtree(into, ignore_errors=True)
                shutil.copytree(src, into, ignore=lambda d, names: [n for n in names if not in_build_context(str((Path(d) / n).relative_to(ROOT)))])
            else:
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, into)


def pip_command(replay: Replay, argv: list[str]) -> list[str] | None:
    """The replay's form of one shell command: pip runs in the venv, `python3 -c` checks run
    with the venv's Python; anything else (useradd, rm, apt-get) is left out and noted."""
    if argv[:1] in (["pip"], ["pip3"]) or argv[:3] in (["python3", "-m", "pip"], ["python", "-m", "pip"]):
        rest = argv[1:] if argv[0].startswith("pip") else argv[3:]
        out, skip_next = [], False
        for i, arg in enumerate(rest):
            if skip_next:
                skip_next = False
                continue
            if arg in ("--index-url", "-i", "--extra-index-url") and rest[i + 1] in UNREACHABLE_INDEXES:
                replay.left_out.append(f"{arg} {rest[i + 1]}: unreachable here, pip used this machine's indexes for the same pins")
                skip_next = True
                continue
            out.append(arg)
        return [str(replay.python), "-m", "pip", *out]
    if argv[:2] in (["python3", "-c"], ["python", "-c"]):
        return [str(replay.python), *argv[1:]]
    replay.left_out.append(f"not replayed: {shlex.join(argv)}")
    return None


def copies_project(command: list[str]) -> bool:
    """A pip step that copies the project's sources into the venv (`pip install .`): run again
    on every replay, for the current sources. An editable install (`-e .`) needs no rerun: it
    points at the staged sources, which every replay copies anew."""
    args = command[command.index("install") + 1 :] if "install" in command else []
    return any((a == "." or a.startswith(("./", "/"))) and (i == 0 or args[i - 1] not in ("-e", "--editable")) for i, a in enumerate(args))


def replay_image(dockerfile: Path) -> Replay:
    """Rebuild `dockerfile`'s Python environment here, cached under CACHE by what decides it:
    the Dockerfile, the Python version, and the single files it copies in (pyproject.toml,
    requirement files; not README.md, which changes no install). The sources are copied anew
    every time, and a step that copies them into the venv runs again."""
    steps = instructions(dockerfile)
    version = BASE_IMAGE_PYTHON[base_image(dockerfile)]
    copied = sorted({s for s in copy_sources(dockerfile) if (ROOT / s).is_file() and s != "README.md"})
    key_parts = [dockerfile.read_bytes(), version.encode(), *(s.encode() + b"\0" + (ROOT / s).read_bytes() for s in copied)]
    key = hashlib.sha256(b"\0".join(key_parts)).hexdigest()[:16]
    home = CACHE / f"{dockerfile.stem}-py{version}-{key}"
    with locked(home.with_name(home.name + ".lock")):
        replay = Replay(dockerfile, home / "venv", home / "root", {})
        replay.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        replay.env["PATH"] = f"{replay.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        done = home / "replayed.json"
        fresh = not done.exists()
        if fresh:
            shutil.rmtree(home, ignore_errors=True)
            subprocess.run([interpreter(version), "-m", "venv", str(replay.venv)], check=True)
        stage_copies(steps, replay.root)
        for workdir, env, command in pip_steps(steps):
            argv = pip_command(replay, command)
            if argv is None or not (fresh or copies_project(argv)):
                continue
            cwd = replay.image_path(workdir)
            cwd.mkdir(parents=True, exist_ok=True)
            replay.env.update(env)  # the Dockerfile's ENV
            run = subprocess.run(argv, cwd=cwd, env=replay.env, capture_output=True, text=True, timeout=3600)
            assert run.returncode == 0, f"{dockerfile.name}: {shlex.join(command)} failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
        replay.left_out = sorted(set(replay.left_out))
        if fresh:
            done.write_text(json.dumps({"left_out": replay.left_out}))
            for stale in CACHE.glob(f"{dockerfile.stem}-py*"):  # earlier versions of this image's replay (GBs)
                if stale.is_dir() and stale != home:
                    shutil.rmtree(stale, ignore_errors=True)
    return replay


BACKEND_CHECK = textwrap.dedent(
    '''
    """Load model.py as Triton's Python backend does and serve one request, with a stand-in for
    triton_python_backend_utils (which exists only inside the server)."""
    import importlib.util, json, sys, types
    from importlib import metadata

    model_py, repository, config_json, out, *more = sys.argv[1:]
    import numpy as np
    import torch
    from torch.utils.dlpack import from_dlpack, to_dlpack

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, np.asarray(array)
        @classmethod
        def from_dlpack(cls, name, capsule):
            return cls(name, from_dlpack(capsule).numpy())
        def as_numpy(self):
            return self.array
        def to_dlpack(self):
            return to_dlpack(torch.from_numpy(self.array))

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.output_tensors, self.error = output_tensors or [], error

    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor, pb.InferenceResponse, pb.TritonError = Tensor, InferenceResponse, lambda message: message
    pb.get_input_tensor_by_name = lambda request, name: request.get(name)
    sys.modules["triton_python_backend_utils"] = pb

    spec = importlib.util.spec_from_file_location("wvm_triton_model", model_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": open(config_json).read(), "model_instance_kind": "CPU",
                      "model_instance_device_id": "0", "model_repository": repository})
    n = model.window_frames
    frames = np.random.default_rng(0).integers(0, 255, size=(1, n, 32, 32, 3), dtype=np.uint8)
    request = {"FRAMES": Tensor("FRAMES", frames), "TASK": Tensor("TASK", np.array([[b"open the drawer"]], dtype=object)),
               "LENGTH": Tensor("LENGTH", np.array([[n]], dtype=np.int32))}
    (response,) = model.execute([request])
    assert response.error is None, response.error
    outputs = {t.name: t.as_numpy() for t in response.output_tensors}
    for name in more:
        importlib.import_module(name)
    json.dump({
        "python": "%d.%d" % sys.version_info[:2],
        "numpy": np.__version__,
        "torch": torch.__version__,
        "wvm_from": __import__("wvm").__file__,
        "values": outputs["VALUES"].tolist(),
        "ood": outputs["OOD"].tolist(),
        "success": outputs["SUCCESS"].tolist(),
        "version": outputs["MODEL_VERSION"].reshape(-1)[0].decode(),
    }, open(out, "w"))
    '''
)


def run_backend(replay: Replay, repository: Path, tmp_path: Path, imports: list[str] = ()) -> dict:
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    # the model configuration as Triton hands it to initialize(): JSON with every field, empty ones too
    config = text_format.Parse((repository / "wvm" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    (tmp_path / "config.json").write_text(json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)))
    (tmp_path / "check.py").write_text(BACKEND_CHECK)
    env = {**replay.env, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [str(replay.python), str(tmp_path / "check.py"), str(repository / "wvm" / "1" / "model.py"), str(repository / "wvm"),
         str(tmp_path / "config.json"), str(tmp_path / "out.json"), *imports],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-6000:]
    return json.loads((tmp_path / "out.json").read_text())


def assert_served(result: dict, replay: Replay, python: str) -> None:
    assert result["python"] == python
    assert Path(result["wvm_from"]).is_relative_to(replay.venv) or Path(result["wvm_from"]).is_relative_to(replay.root), result["wvm_from"]
    (values,), ((ood,),), ((success,),) = result["values"], result["ood"], result["success"]
    assert len(values) == 24 and all(0.0 <= v <= 1.0 for v in values) and ood >= 0.0 and 0.0 < success < 1.0
    assert result["version"].startswith("wvm-") and "@" in result["version"]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.slow
def test_triton_image_serves_the_model_on_its_own_python(tmp_path):
    """triton.Dockerfile's pip steps in a fresh Python 3.12 venv (NGC tritonserver 25.10's
    Python): the pinned requirements install with nothing unpinned besides, and the backend
    initializes and answers a request. torch is the real PyPI build the image gets (CUDA 13.0;
    it runs on CPU here). Not replayed: the base image itself (NGC is unreachable here), so the
    Triton server and its stub are not run; useradd and the cleanup `rm`."""
    dockerfile = DOCKER / "triton.Dockerfile"
    replay = replay_image(dockerfile)
    # consistent among themselves; wvm itself is installed without its dependencies on purpose
    # (the pipeline's: Beam, Dask, Prefect, ...; and numpy 1 for the stub, not its numpy 2 pin)
    check = subprocess.run([str(replay.python), "-m", "pip", "check"], capture_output=True, text=True, env=replay.env)
    assert [line for line in check.stdout.splitlines() if not line.startswith("wvm 0.1.0 ")] == [], check.stdout + check.stderr
    freeze = subprocess.run([str(replay.python), "-m", "pip", "freeze", "--exclude", "wvm"], capture_output=True, text=True, check=True).stdout
    installed = {normalized(n): v for n, _, v in (line.partition("==") for line in freeze.splitlines() if "==" in line)}
    pinned = {}
    for line in (DOCKER / "triton-requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.strip().partition("==")
            assert version, f"triton-requirements.txt: {line} is not pinned"
            pinned[normalized(name)] = version
    assert installed == pinned, {k: (installed.get(k), pinned.get(k)) for k in set(installed) | set(pinned) if installed.get(k) != pinned.get(k)}
    result = run_backend(replay, replay.image_path("/models"), tmp_path)
    assert_served(result, replay, "3.12")
    assert result["numpy"].startswith("1."), "the backend stub needs numpy 1 (REFERENCE §6)"
    assert result["torch"].startswith("2.13.0")
    assert all(note.startswith("not replayed: ") and not note.startswith("not replayed: python") for note in replay.left_out), replay.left_out


@pytest.mark.slow
def test_pipeline_image_runs_what_its_pods_run(tmp_path):
    """wvm.Dockerfile's pip steps in a fresh Python 3.11 venv: the flows, the Prefect
    Kubernetes worker and the model backend import and run, and every command the manifests
    start from this image is installed. Not replayed: `--index-url` of the PyTorch CPU index
    (unreachable here; the same torch 2.13.0 CPU build comes from this machine's wheels) and the
    base image's system packages."""
    replay = replay_image(DOCKER / "wvm.Dockerfile")
    assert any("download.pytorch.org" in note for note in replay.left_out), replay.left_out
    result = run_backend(replay, replay.image_path("/opt/wvm/model_repository"), tmp_path, ["flows.nightly", "prefect_kubernetes.worker", "distributed"])
    assert_served(result, replay, "3.11")
    assert result["torch"] == "2.13.0+cpu"
    commands = {
        c["command"][0]
        for overlay in OVERLAYS
        for name, pod in workloads(docs_of(overlay)).items()
        if name != "wvm-triton"  # every other pod runs the pipeline image
        for c in pod["spec"]["containers"]
    }
    assert commands == {"dask", "prefect"}
    assert all((replay.venv / "bin" / command).exists() for command in commands)
    # the Job the image's own prefect-kubernetes makes of the work pool's template for a
    # nightly-k8s run is hardened and labelled as the fast tests expect of flow_run_job()
    prepare = textwrap.dedent(
        """
        import asyncio, json, sys, uuid
        from prefect.client.schemas.objects import FlowRun
        from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration
        template, values = json.load(open(sys.argv[1])), json.loads(sys.argv[2])
        config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
        config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="nightly-run", flow_id=uuid.uuid4()))
        print(json.dumps(config.job_manifest))
        """
    )
    deployment = next(d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"] if d["name"] == "nightly-k8s")
    values = {**deployment["work_pool"]["job_variables"], "image": "registry.example.com/wvm/pipeline:0.1.0"}
    env = {**replay.env, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # never contacted
    run = subprocess.run([str(replay.python), "-c", prepare, str(INFRA / "prefect" / "base-job-template.json"), json.dumps(values)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    job = json.loads(run.stdout.strip().splitlines()[-1])
    pod = job["spec"]["template"]
    assert not check_pod_hardening("flow-run", pod, service_accounts(docs_of("base")), probes=False)
    assert pod["metadata"]["labels"]["app"] == flow_run_job()["spec"]["template"]["metadata"]["labels"]["app"] == "wvm-flow-run"
    assert pod["spec"]["containers"][0]["args"] == ["prefect", "flow-run", "execute"]
    assert (pod["spec"].pop("completions"), pod["spec"].pop("parallelism")) == (1, 1)  # see flow_run_job()
    job["metadata"]["name"] = job["metadata"].pop("generateName") + "x"
    kubernetes_validate([job], tmp_path)


# --------------------------------------------------------------------------- models, Prefect


def test_gpu_model_config_exists_for_the_overlay():
    assert (ROOT / "model_repository/wvm/configs/gpu.pbtxt").read_text().count("KIND_GPU") == 1


def test_prefect_deployments_point_at_real_flows():
    from flows.nightly import nightly_flow

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    accepted = set(inspect.signature(nightly_flow.fn).parameters)
    for deployment in config["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        assert (ROOT / path).exists() and name == "nightly_flow"
        assert set(deployment["parameters"]) <= accepted
        (schedule,) = deployment["schedules"]
        assert schedule["cron"].count(" ") == 4 and schedule["timezone"]
        assert deployment["work_pool"]["name"] in ("wvm-local", "wvm-k8s")
