"""deploy/ holds up: the Kubernetes overlays render (deploy/k8s/render.py, compared with
the real kustomize when one is installed), validate against the API schemas of the three
newest Kubernetes versions kubernetes-validate ships (strict: unknown fields are errors),
pass checkov with every skip justified, and wire probes, security and config the way the
server works. Broken copies (no liveness probe, runAsNonRoot false, a misspelt field)
are rejected, so each check can fail.

kubernetes-validate comes with the [deploy] extra; checkov has a venv of its own
(`make deploy-check`: it pins packaging<24 and networkx<2.7, which would downgrade the
project's own tools). Tests that need either skip, saying which, when it is absent.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from packaging.requirements import Requirement

from recall_engine.config import DEFAULT_TOKEN_ENV, parse_config
from recall_engine.serving.registry import check_plugin_params
from recall_engine.serving.server import LIVENESS_SERVICE
from tests.harness import catalog_of, make_config, serve

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
IMAGES = ROOT / "deploy" / "images"
OVERLAYS = ("dev", "prod", "gpu")
REFERENCES = ("nats-jetstream.yaml", "rayjob-build.yaml")
UID = 10001

_spec = importlib.util.spec_from_file_location("deploy_k8s_render", K8S / "render.py")
assert _spec and _spec.loader
render_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_mod)
render = render_mod.render

Doc = dict[str, Any]


def rendered(overlay: str) -> list[Doc]:
    return render(K8S / "overlays" / overlay)


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str) -> Doc:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def key(d: Doc) -> tuple[str, str, str | None, str]:
    return (d["apiVersion"], d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])


def reference_docs(name: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all((K8S / "reference" / name).read_text()) if d]


# --------------------------------------------------------------------------- rendering


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        probe = subprocess.run(["kubectl", "kustomize", "--help"], capture_output=True)
        if probe.returncode == 0:
            return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_matches_kustomize(overlay):
    cmd = _kustomize_command()
    if cmd is None:
        pytest.skip("neither kustomize nor kubectl is installed to compare the renderer with")
    out = subprocess.run(
        [*cmd, str(K8S / "overlays" / overlay)], capture_output=True, text=True, check=True
    ).stdout
    theirs = {key(d): d for d in yaml.safe_load_all(out) if d}
    ours = {key(d): d for d in rendered(overlay)}
    assert ours.keys() == theirs.keys()
    for k, doc in ours.items():
        assert doc == theirs[k], k


def test_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\nconfigMapGenerator: [{name: x, literals: [a=b]}]\n"
    )
    (tmp_path / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {b: c}\n"
    )
    with pytest.raises(render_mod.RenderError, match="configMapGenerator"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches:\n- target: {kind: ConfigMap, name: a}\n"
        "  patch: |-\n    metadata: {labels: {x: y}}\n"
    )
    with pytest.raises(render_mod.RenderError, match="JSON 6902"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches:\n- target: {kind: ConfigMap, name: a}\n"
        "  patch: |-\n    - {op: replace, path: /data/missing, value: 1}\n"
    )
    with pytest.raises(render_mod.RenderError, match="no such member"):
        render(tmp_path)


def test_every_overlay_has_the_parts_of_a_deployment():
    for overlay in OVERLAYS:
        docs = rendered(overlay)
        kinds = {d["kind"] for d in docs}
        assert {
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Deployment",
            "Service",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
        } <= kinds, overlay
        ns = one(docs, "Namespace")["metadata"]["name"]
        assert all(d["metadata"].get("namespace") == ns for d in docs if d["kind"] != "Namespace")
        services = by_kind(docs, "Service")
        assert [s["spec"].get("clusterIP") for s in services].count("None") == 1, overlay
        assert one(docs, "Namespace")["metadata"]["labels"][
            "pod-security.kubernetes.io/enforce"
        ] == ("restricted")
    assert any("nvidia.com/gpu" in str(d) for d in rendered("gpu"))
    assert not any("nvidia.com/gpu" in str(d) for d in rendered("prod"))


# --------------------------------------------------------------------------- our policy


def policy_problems(docs: list[Doc]) -> list[str]:
    """What the server needs from its Deployment, beyond what schemas and checkov see:
    separate liveness and readiness, the startup probe, the security context, the token
    file, the config path, the selectors of everything that points at the pods."""
    problems: list[str] = []
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken is not false")
    if not (psc.get("runAsNonRoot") and csc.get("runAsNonRoot", True)):
        problems.append("runAsNonRoot is not true")
    if csc.get("runAsUser", psc.get("runAsUser")) != UID:
        problems.append(f"runAsUser is not the image's {UID}")
    if csc.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem is not true")
    if csc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if csc.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append("capabilities are not dropped (ALL)")
    seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {}))
    if seccomp.get("type") != "RuntimeDefault":
        problems.append("seccomp profile is not RuntimeDefault")
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        if "grpc" not in c.get(name, {}):
            problems.append(f"{name}: missing or not gRPC health")
    live = c.get("livenessProbe", {}).get("grpc", {}).get("service", "")
    ready = c.get("readinessProbe", {}).get("grpc", {}).get("service", "")
    if live != LIVENESS_SERVICE:
        problems.append(f"livenessProbe checks {live!r}, not {LIVENESS_SERVICE!r}")
    if ready == LIVENESS_SERVICE or ready == live:
        problems.append("readinessProbe checks the liveness service")
    for part in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(c.get("resources", {}).get(part, {})):
            problems.append(f"resources.{part} lack cpu or memory")
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    token_file = env.get("RECALL_ENGINE_ADMIN_TOKEN_FILE", "")
    secret_mounts = [
        m for n, m in mounts.items() if "secret" in volumes.get(n, {}) and m.get("readOnly")
    ]
    if not any(token_file.startswith(m["mountPath"] + "/") for m in secret_mounts):
        problems.append("RECALL_ENGINE_ADMIN_TOKEN_FILE is not a file of a mounted Secret")
    if any(e.get("valueFrom", {}).get("secretKeyRef") for e in c.get("env", [])):
        problems.append("a Secret is passed as an environment variable")
    config_path = c["args"][c["args"].index("--config") + 1]
    if not any(
        config_path.startswith(m["mountPath"] + "/") and "configMap" in volumes.get(n, {})
        for n, m in mounts.items()
    ):
        problems.append(f"--config {config_path} is not in a mounted ConfigMap")
    if "tmp" not in mounts or mounts["tmp"]["mountPath"] != "/tmp":
        problems.append("/tmp is not a writable volume")
    # serve's default is a process per core, each with its own /metrics port (base + i):
    # the pod exposes and Prometheus scrapes one, so the pod runs one process
    args = c["args"]
    if "--processes" not in args or args[args.index("--processes") + 1] != "1":
        problems.append("serve runs more than one process, but the pod exposes one metrics port")
    # start-up opens the catalogue's update log for writing (build-cpu.sh showed a
    # read-only artifacts root failing with EROFS): the catalogue needs a writable mount
    by_path = {m["mountPath"]: m for m in mounts.values()}
    catalog = by_path.get("/artifacts/catalog")
    if catalog is None or catalog.get("readOnly") or "emptyDir" not in volumes[catalog["name"]]:
        problems.append("/artifacts/catalog is not a writable volume of the pod")
    if not by_path.get("/artifacts", {}).get("readOnly"):
        problems.append("the shared artifacts volume is not mounted read-only")
    for init in pod.get("initContainers", []):
        if init.get("image") != c["image"]:
            problems.append(f"init container {init['name']} runs another image")
        if init.get("imagePullPolicy") != c.get("imagePullPolicy"):
            problems.append(f"init container {init['name']} pulls differently")
    labels = dep["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    for kind, sel in (
        ("Service", lambda d: d["spec"]["selector"]),
        ("PodDisruptionBudget", lambda d: d["spec"]["selector"]["matchLabels"]),
        ("NetworkPolicy", lambda d: d["spec"]["podSelector"]["matchLabels"]),
    ):
        for d in by_kind(docs, kind):
            if not selects(sel(d)):
                problems.append(f"{kind} {d['metadata']['name']} does not select the pods")
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    if (hpa["kind"], hpa["name"]) != ("Deployment", dep["metadata"]["name"]):
        problems.append("the HorizontalPodAutoscaler scales something else")
    if "replicas" in dep["spec"]:
        problems.append("the Deployment sets replicas, which re-applying resets under the HPA")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_meets_the_server_policy(overlay):
    assert policy_problems(rendered(overlay)) == []


def _deployment_container(docs: list[Doc]) -> Doc:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


BREAKAGES = {
    "no liveness probe": lambda c, p: c.pop("livenessProbe"),
    "liveness is readiness": lambda c, p: c["livenessProbe"]["grpc"].pop("service"),
    "runAsNonRoot false": lambda c, p: p["securityContext"].update(runAsNonRoot=False),
    "writable root": lambda c, p: c["securityContext"].update(readOnlyRootFilesystem=False),
    "token as env": lambda c, p: c["env"].append(
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    ),
    "no limits": lambda c, p: c["resources"].pop("limits"),
    "a process per core": lambda c, p: c.update(args=c["args"][: c["args"].index("--processes")]),
    "read-only catalogue": lambda c, p: [
        m.update(readOnly=True) for m in c["volumeMounts"] if m["name"] == "catalog"
    ],
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_policy_rejects_a_broken_deployment(breakage):
    docs = copy.deepcopy(rendered("prod"))
    container = _deployment_container(docs)
    BREAKAGES[breakage](container, one(docs, "Deployment")["spec"]["template"]["spec"])
    assert policy_problems(docs), breakage


# --------------------------------------------------------------------------- config


def test_config_map_is_a_valid_config_with_the_admin_token_from_the_secret(tmp_path):
    text = one(rendered("prod"), "ConfigMap")["data"]["recall.toml"]
    data = tomllib.loads(text)
    config = parse_config(data, tmp_path, environ={DEFAULT_TOKEN_ENV: "t0ken"})
    check_plugin_params(config)
    assert config.admin.token == "t0ken"
    assert config.admin.token_env == DEFAULT_TOKEN_ENV
    assert "RECALL_ENGINE_ADMIN_TOKEN" in (IMAGES / "entrypoint").read_text()
    assert str(config.artifacts_root) == "/artifacts"
    server = config.server
    dep = one(rendered("prod"), "Deployment")
    ports = {p["name"]: p["containerPort"] for p in _deployment_container([dep])["ports"]}
    assert server.addr.endswith(f":{ports['grpc']}")
    assert (server.admin_addr or "").endswith(f":{ports['admin']}")
    assert server.metrics_addr.endswith(f":{ports['metrics']}")
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert server.drain_s + server.grace_s < grace
    assert config.overload.max_in_flight > 0, "0 would size it from the node's cores"


# --------------------------------------------------------------------------- images


def _pins(name: str) -> dict[str, str]:
    lines = (IMAGES / name).read_text().splitlines()
    reqs = [Requirement(x) for x in lines if x.strip() and not x.startswith("#")]
    return {r.name.lower().replace("_", "-"): str(r.specifier).removeprefix("==") for r in reqs}


def test_image_requirements_are_pyproject_dependencies_pinned():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    cpu, cuda = _pins("requirements-cpu.txt"), _pins("requirements-cuda.txt")
    for dep in map(Requirement, deps):
        name = dep.name.lower().replace("_", "-")
        cpu_name = "onnxruntime" if name == "onnxruntime-gpu" else name
        assert cpu_name in cpu and dep.specifier.contains(cpu[cpu_name]), dep
        assert name in cuda and dep.specifier.contains(cuda[name]), dep
    assert "onnxruntime-gpu" not in cpu and "onnxruntime" not in cuda
    assert {k: v for k, v in cpu.items() if k != "onnxruntime"} == {
        k: v for k, v in cuda.items() if k != "onnxruntime-gpu"
    }
    assert cpu["onnxruntime"] == cuda["onnxruntime-gpu"]
    for heavy in ("torch", "transformers", "sentence-transformers", "onnx", "scipy"):
        assert heavy not in cpu


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_dockerfile_runs_non_root_read_only_under_tini(target):
    text = (IMAGES / f"{target}.Dockerfile").read_text()
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("#")]
    users = [x.split()[1] for x in lines if x.startswith("USER ")]
    assert users == [f"{UID}:{UID}"]
    assert any(x.startswith("HEALTHCHECK ") for x in lines)
    (entry,) = [x for x in lines if x.startswith("ENTRYPOINT ")]
    assert json.loads(entry.removeprefix("ENTRYPOINT "))[:2] == ["/usr/bin/tini", "--"]
    assert sum(x.startswith("FROM ") for x in lines) == 3  # base, build, serve
    assert f"requirements-{target}.txt" in text and "--no-deps" in text
    assert "PYTHONDONTWRITEBYTECODE=1" in text


def test_entrypoint_exports_the_admin_token_file(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    env = {"PATH": os.environ["PATH"], "RECALL_ENGINE_ADMIN_TOKEN_FILE": str(token)}
    out = subprocess.run(
        ["sh", str(IMAGES / "entrypoint"), "sh", "-c", 'printf %s "$RECALL_ENGINE_ADMIN_TOKEN"'],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "s3cret"
    env["RECALL_ENGINE_ADMIN_TOKEN_FILE"] = str(tmp_path / "missing")
    missing = subprocess.run(["sh", str(IMAGES / "entrypoint"), "true"], env=env)
    assert missing.returncode != 0


def test_build_script_parses():
    subprocess.run(["bash", "-n", str(IMAGES / "build-cpu.sh")], check=True)


# --------------------------------------------------------------------------- liveness


def _health(port: int, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        req = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(ch).Check(req, timeout=5).status


def _probe_script(port: int, service: str) -> int:
    script = IMAGES / "health_probe.py"
    cmd = [sys.executable, str(script), "--addr", f"127.0.0.1:{port}", "--service", service]
    return subprocess.run(cmd, capture_output=True, timeout=60).returncode


def test_liveness_serves_while_loading_and_draining_when_readiness_does_not(tmp_path):
    config = make_config(
        {"channels": {"a": {"plugin": "fixed", "params": {"items": ["i1", "i2"]}}}}, tmp_path
    )
    serving = health_pb2.HealthCheckResponse.SERVING
    with serve(config, catalog_of(["i1", "i2"]), load=False) as s:
        assert _health(s.port, "") != serving  # loading: not ready ...
        assert _health(s.port, LIVENESS_SERVICE) == serving  # ... but alive
        assert _probe_script(s.port, "") == 1
        assert _probe_script(s.port, LIVENESS_SERVICE) == 0
        s.call(lambda: s.running.set_serving(True))
        assert _probe_script(s.port, "") == 0
        # SIGTERM's drain: readiness goes, liveness stays until the listener closes
        fut = asyncio.run_coroutine_threadsafe(s.running.stop(0, drain=30), s.loop)
        deadline = time.monotonic() + 10
        while _health(s.port, "") == serving:
            assert time.monotonic() < deadline, "readiness never left SERVING"
            time.sleep(0.05)
        assert _health(s.port, LIVENESS_SERVICE) == serving
        fut.cancel()


# --------------------------------------------------------------------------- schemas


def _validator():
    return pytest.importorskip(
        "kubernetes_validate", reason="needs kubernetes-validate, from the [deploy] extra"
    )


def _newest_versions(kv) -> list[str]:
    """The three newest Kubernetes minor versions the installed package has schemas for."""
    minors = {tuple(map(int, v.split(".")[:2])) for v in kv.utils.all_versions()}
    return [f"{major}.{minor}" for major, minor in sorted(minors)[-3:]]


def _validate(kv, doc: Doc, version: str) -> None:
    kv.validate(doc, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_validate_strictly_on_the_newest_kubernetes(overlay):
    kv = _validator()
    versions = _newest_versions(kv)
    assert len(versions) == 3
    for version in versions:
        for doc in rendered(overlay):
            _validate(kv, doc, version)


def test_references_validate_strictly():
    kv = _validator()
    for version in _newest_versions(kv):
        for doc in reference_docs("nats-jetstream.yaml"):
            _validate(kv, doc, version)
        # No schema for the RayJob CRD offline: check its shape, and its pods as
        # Kubernetes PodTemplates.
        (job,) = reference_docs("rayjob-build.yaml")
        assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
        spec = job["spec"]
        assert spec["entrypoint"].startswith("recall-engine build")
        assert spec["shutdownAfterJobFinishes"] is True
        cluster = spec["rayClusterSpec"]
        templates = [cluster["headGroupSpec"]["template"]]
        templates += [g["template"] for g in cluster["workerGroupSpecs"]]
        for i, template in enumerate(templates):
            wrapped = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": f"ray-{i}"},
                "template": template,
            }
            _validate(kv, wrapped, version)
    (sts,) = [d for d in reference_docs("nats-jetstream.yaml") if d["kind"] == "StatefulSet"]
    assert sts["spec"]["replicas"] == 3


def test_strict_validation_rejects_a_misspelt_field():
    kv = _validator()
    docs = copy.deepcopy(rendered("prod"))
    c = _deployment_container(docs)
    c["livenessProbes"] = c.pop("livenessProbe")
    with pytest.raises(kv.ValidationError):
        _validate(kv, one(docs, "Deployment"), _newest_versions(kv)[-1])


# --------------------------------------------------------------------------- checkov


def _checkov() -> str:
    for candidate in (
        os.environ.get("CHECKOV"),
        str(ROOT / ".venv" / "checkov" / "bin" / "checkov"),  # make deploy-check
        shutil.which("checkov"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("checkov is not installed: `make deploy-check` puts it in .venv/checkov")


def _run_checkov(files: list[Path], framework: str) -> dict[str, Any]:
    cmd = [_checkov(), "--framework", framework, "--output", "json", "--quiet", "--compact"]
    cmd += ["--skip-download"]
    for f in files:
        cmd += ["-f", str(f)]
    # no network: no guideline download, no version check
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    # checkov runs in a venv of its own: none of this interpreter's import set-up
    # (tests/without_extras hides modules through PYTHONPATH) applies to it
    for key in ("PYTHONPATH", "RECALL_ENGINE_HIDE_MODULES"):
        env.pop(key, None)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode in (0, 1), out.stderr[-2000:]
    report = json.loads(out.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    skipped = [c for r in reports for c in r.get("results", {}).get("skipped_checks", [])]
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    return {"failed": failed, "skipped": skipped, "passed": passed}


def _write_rendered(tmp_path: Path, docs_by_name: dict[str, list[Doc]]) -> list[Path]:
    paths = []
    for name, docs in docs_by_name.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        paths.append(path)
    return paths


def test_checkov_passes_manifests_with_every_skip_justified(tmp_path):
    docs = {o: rendered(o) for o in OVERLAYS}
    docs["nats"] = reference_docs("nats-jetstream.yaml")
    result = _run_checkov(_write_rendered(tmp_path, docs), "kubernetes")
    assert result["passed"] > 100
    assert [(c["check_id"], c["resource"]) for c in result["failed"]] == []
    for c in result["skipped"]:
        assert len(c.get("suppress_comment", "").strip()) > 20, c["check_id"]


def test_checkov_passes_dockerfiles_with_every_skip_justified():
    files = [IMAGES / "cpu.Dockerfile", IMAGES / "cuda.Dockerfile"]
    result = _run_checkov(files, "dockerfile")
    assert result["passed"] > 50
    assert [(c["check_id"], c["resource"]) for c in result["failed"]] == []
    for c in result["skipped"]:
        assert len(c.get("suppress_comment", "").strip()) > 20, c["check_id"]


def test_checkov_rejects_a_root_deployment_without_liveness(tmp_path):
    docs = copy.deepcopy(rendered("prod"))
    c = _deployment_container(docs)
    c.pop("livenessProbe")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    for sc in (pod["securityContext"], c["securityContext"]):  # root: UID 0, root allowed
        sc.update(runAsNonRoot=False, runAsUser=0)
    result = _run_checkov(_write_rendered(tmp_path, {"broken": docs}), "kubernetes")
    failed = {x["check_id"] for x in result["failed"]}
    assert "CKV_K8S_8" in failed  # liveness probe
    assert "CKV_K8S_23" in failed  # root containers
    assert "CKV_K8S_40" in failed  # a high UID
