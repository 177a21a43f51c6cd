"""Deployment files agree with the code: Kubernetes manifests, Dockerfile, infra/README.md.

No Docker engine or cluster here, so everything is checked statically: manifests parse,
entry points exist and their arguments pass the job's own argparse parser, the ConfigMap's
configuration loads, images and versions agree, secrets only come from secretKeyRef."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import pipeline
from pipeline.config import load_config

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"
README = REPO / "infra" / "README.md"
APP = "/app"  # the image's WORKDIR, where jobs/ and configs/ are copied
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
# Run a job file with argparse stopped right after a successful parse: the job's real
# parser validates the arguments, and nothing else of the job runs.
PARSE_ONLY = """
import argparse, json, runpy, sys
_orig = argparse.ArgumentParser.parse_args
def _parse_only(self, args=None, namespace=None):
    ns = _orig(self, args, namespace)
    print("PARSED " + json.dumps(sorted(vars(ns))))
    raise SystemExit(0)
argparse.ArgumentParser.parse_args = _parse_only
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _docs() -> dict[str, list[dict[str, Any]]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d]
            for p in sorted(K8S.glob("*.yaml"))}


def _one(kind: str) -> dict[str, Any]:
    found = [d for docs in _docs().values() for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _pod_specs(rayjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"],
            "submitter": rayjob["spec"]["submitterPodTemplate"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        pods[f"worker:{group['groupName']}"] = group["template"]["spec"]
    return pods


def _pin(name: str) -> str:
    text = (REPO / "constraints.txt").read_text()
    match = re.search(rf"^{re.escape(name)}==(\S+)$", text, re.MULTILINE | re.IGNORECASE)
    assert match, f"{name} is not pinned in constraints.txt"
    return match.group(1)


def _local_job(path_in_image: str) -> Path:
    assert path_in_image.startswith(f"{APP}/jobs/"), path_in_image
    job = REPO / path_in_image[len(APP) + 1:]
    assert job.is_file(), f"{path_in_image}: no such job file in the repository ({job})"
    return job


def _parse(job: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PARSE_ONLY, str(job), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def _entry_points() -> list[tuple[str, Path, list[str]]]:
    rayjob, spark = _one("RayJob"), _one("SparkApplication")
    words = shlex.split(rayjob["spec"]["entrypoint"])
    assert words[0] == "python", words
    main = spark["spec"]["mainApplicationFile"]
    assert main.startswith("local://"), main
    return [("RayJob", _local_job(words[1]), words[2:]),
            ("SparkApplication", _local_job(main[len("local://"):]),
             [str(a) for a in spark["spec"]["arguments"]])]


def _option(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def test_manifests_parse_and_kustomization_lists_them() -> None:
    docs = _docs()
    for name, items in docs.items():
        for doc in items:
            assert doc.get("apiVersion") and doc.get("kind"), name
            if doc["kind"] == "Namespace":
                assert doc["metadata"]["name"] == "pipeline"
            elif doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"] and doc["metadata"]["namespace"] == "pipeline"
    assert _one("RayJob")["apiVersion"] == "ray.io/v1"
    assert _one("SparkApplication")["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    resources = set(_one("Kustomization")["resources"])
    # Every manifest is applied, except the placeholder Secret, which must never be.
    assert resources == set(docs) - {"kustomization.yaml", "secret.example.yaml"}


def test_entry_points_exist_and_their_parsers_accept_the_arguments() -> None:
    for owner, job, args in _entry_points():
        done = _parse(job, args)
        assert done.returncode == 0 and "PARSED" in done.stdout, (
            f"{owner}: {job.name} {args} rejected:\n{done.stderr[-2000:]}")
    # The check has teeth: an unknown flag is refused by the same route.
    owner, job, args = _entry_points()[1]
    assert _parse(job, [*args, "--no-such-flag"]).returncode == 2


def test_configmap_config_loads_with_each_jobs_overrides(tmp_path: Path) -> None:
    cm = _one("ConfigMap")
    assert cm["metadata"]["name"] == "pipeline-config" and list(cm["data"]) == ["pipeline.yaml"]
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(cm["data"]["pipeline.yaml"])
    for owner, _job, args in _entry_points():
        assert _option(args, "--config") == ["/etc/pipeline/pipeline.yaml"], owner
        overrides = [*_option(args, "--set"), *(f"run_id={r}" for r in _option(args, "--run-id"))]
        cfg = load_config(config_file, overrides)
        # Spark reads and writes the root too: it must be a Hadoop-visible URL.
        assert cfg.storage.root.split("://")[0] in {"s3a", "hdfs", "gs", "abfss"}, owner
    rayjob = _one("RayJob")
    cfg = load_config(config_file, _option(shlex.split(rayjob["spec"]["entrypoint"]), "--set"))
    assert cfg.ray.address == "auto"
    gpus = cpus = 0
    for group in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus += group["replicas"] * int(limits.get("nvidia.com/gpu", 0))
        cpus = max(cpus, int(limits["cpu"]))
    scaling = cfg.train.scaling
    assert scaling.use_gpu != "yes" or scaling.num_workers <= gpus, (scaling, gpus)
    assert scaling.cpus_per_worker <= cpus


def test_images_and_versions_agree_with_the_readme_and_the_pins() -> None:
    version = pipeline.__version__
    rayjob, spark = _one("RayJob"), _one("SparkApplication")
    images = {f"rayjob/{name}": c["image"] for name, pod in _pod_specs(rayjob).items()
              for c in pod["containers"]}
    images["sparkapplication"] = spark["spec"]["image"]
    repos = {image.rsplit(":", 1)[0] for image in images.values()}
    assert len(repos) == 1, images
    (repo,) = repos
    assert spark["spec"]["image"] == f"{repo}:{version}"  # Spark: the CPU image
    for where, image in images.items():
        if where.startswith("rayjob/"):  # the Ray cluster: the CUDA image, everywhere alike
            assert image == f"{repo}:{version}-cuda", where
    readme = README.read_text()
    built = set(re.findall(r"docker build [^\n]*?-t (\S+)", readme.replace("\\\n", " ")))
    pushed = set(re.findall(r"docker push (\S+)", readme))
    assert set(images.values()) <= built and set(images.values()) <= pushed, (built, pushed)
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == _pin("ray")
    assert spark["spec"]["sparkVersion"] == _pin("pyspark")
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    (hadoop,) = [p.name[len("hadoop-client-api-"):-len(".jar")]
                 for p in jars.glob("hadoop-client-api-*.jar")]
    cm_conf = yaml.safe_load(_one("ConfigMap")["data"]["pipeline.yaml"])["spark"]["conf"]
    want = f"org.apache.hadoop:hadoop-aws:{hadoop}"
    assert spark["spec"]["deps"]["packages"] == [want]
    assert cm_conf["spark.jars.packages"] == want


def test_secrets_come_only_from_secret_key_refs() -> None:
    example = _one("Secret")
    placeholders = example["stringData"]
    assert set(placeholders.values()) == {"REPLACE_ME"}
    for name, items in _docs().items():
        if name == "secret.example.yaml":
            continue
        for doc in items:
            for node in _walk(doc):
                is_env = "name" in node and ("value" in node or "valueFrom" in node)
                if is_env and SECRET_NAME.search(str(node["name"])):
                    ref = node.get("valueFrom", {}).get("secretKeyRef", {})
                    assert "value" not in node and ref.get("name") == "pipeline-secrets", (
                        f"{name}: {node['name']} must come from secretKeyRef")
                    assert ref.get("key") in placeholders, (name, node)
        text = (K8S / name).read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}|REPLACE_ME", text), name
    runtime_env = yaml.safe_load(_one("RayJob")["spec"]["runtimeEnvYAML"])
    assert not any(SECRET_NAME.search(k) for k in runtime_env.get("env_vars", {}))
    assert not any(k in json.dumps(runtime_env) for k in placeholders)
    for pod in _pod_specs(_one("RayJob")).values():
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_gpu_resources_are_nvidia_gpus_on_the_worker_group() -> None:
    for name, items in _docs().items():
        for doc in items:
            for node in _walk(doc):
                for key in node:
                    if "gpu" in str(key).lower() and isinstance(node[key], (int, str)):
                        assert key == "nvidia.com/gpu", f"{name}: resource {key}"
    rayjob = _one("RayJob")
    pods = _pod_specs(rayjob)
    gpu_groups = [n for n, pod in pods.items()
                  if "nvidia.com/gpu" in pod["containers"][0]["resources"].get("limits", {})]
    assert gpu_groups and all(n.startswith("worker:") for n in gpu_groups)
    for n in gpu_groups:
        res = pods[n]["containers"][0]["resources"]
        assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] >= 1
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True
    sa = _one("SparkApplication")["spec"]["driver"]["serviceAccount"]
    assert sa in {d["metadata"]["name"] for d in _docs()["rbac.yaml"]
                  if d["kind"] == "ServiceAccount"}


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _ignored(path: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        bare = pattern[3:] if pattern.startswith("**/") else pattern
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p.split("/")[-1], bare)
               for p in prefixes):
            return True
    return False


def test_dockerfile_pins_bases_uses_constraints_and_runs_as_non_root() -> None:
    steps = _instructions(DOCKERFILE.read_text())
    known = {"ARG", "FROM", "ENV", "RUN", "COPY", "WORKDIR", "USER", "ENTRYPOINT", "CMD",
             "LABEL", "EXPOSE", "HEALTHCHECK", "SHELL", "VOLUME"}
    assert {word for word, _ in steps} <= known, steps
    args = {}
    for word, rest in steps:
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
    stages = []
    for word, rest in steps:
        if word == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
            stages.append(rest.split()[-1])
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest" and re.search(r"\d", tag), image
    assert len(stages) >= 2  # multi-stage: build, runtime
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "-c constraints.txt" in runs and "cpu)" in runs and "cuda)" in runs
    assert "openjdk-17" in runs
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    # SPARK_HOME points into the base image's Python version.
    python = re.match(r"python:(\d+\.\d+)", args["BASE"])
    assert python and f"python{python.group(1)}/site-packages/pyspark" in DOCKERFILE.read_text()
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _dest = rest.split()
            for src in sources:
                assert (REPO / src).exists(), f"COPY source {src} does not exist"
                assert not _ignored(src, patterns), f"COPY source {src} is in .dockerignore"
    entry = json.loads(next(rest for word, rest in steps if word == "ENTRYPOINT"))
    assert entry[-1] == "/usr/local/bin/pipeline-entrypoint"
    script = REPO / "infra" / "docker" / "entrypoint.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    assert "KubernetesExecutorBackend" in script.read_text()
