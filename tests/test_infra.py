"""The deployment templates render and are valid Kubernetes 1.37 manifests; the Prefect
deployments file names flows that exist, with schedules and parameters they accept."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("overlay", ["base", "overlays/gpu"])
def test_kustomize_renders_valid_manifests(overlay, tmp_path):
    kubectl = shutil.which("kubectl", path=str(BIN)) or "kubectl"
    rendered = subprocess.run([kubectl, "kustomize", str(ROOT / "infra/k8s" / overlay)], capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "wvm-triton") in kinds and ("Service", "wvm-dask-scheduler") in kinds
    manifest = tmp_path / "all.yaml"
    manifest.write_text(rendered)
    check = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(manifest)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    triton = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "wvm-triton")
    args = triton["spec"]["template"]["spec"]["containers"][0]["args"]
    assert ("--model-config-name=gpu" in args) == (overlay == "overlays/gpu")


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
