"""Render a kustomization without the kustomize binary: the subset deploy/k8s uses.

    python deploy/k8s/render.py deploy/k8s/overlays/prod > prod.yaml

Supported, with kustomize's meaning; any other key in a kustomization.yaml is an error
(never silently ignored), so a manifest that needs more fails here, loudly:

``resources``
    YAML files (several documents each) and directories holding a kustomization.yaml.
    A directory is rendered first, its own transforms included, and the including
    kustomization's transforms apply on top, as kustomize does.
``patches``
    JSON 6902 patches (RFC 6902: ``add``, ``remove``, ``replace``, ``test``), inline
    (``patch:``) or from a file (``path:``), each with a ``target`` selecting by
    ``kind`` and ``name`` (``group``, ``version``, ``namespace`` optional). Strategic
    merge patches are refused: their list-merge rules are what this renderer does not
    copy.
``namespace``
    set on every namespaced resource (cluster-scoped kinds are left alone).
``labels``
    ``pairs`` added to every resource's ``metadata.labels``; ``includeSelectors`` and
    ``includeTemplates`` must be false or absent (selectors never change).
``images``
    ``name`` -> ``newName`` / ``newTag`` / ``digest`` for every ``containers`` and
    ``initContainers`` entry whose image has that name (any tag or digest).

Order, as kustomize's: resources, patches, namespace, labels, images. Output order is
the order of the resources. tests/test_deploy_manifests.py compares this renderer with
``kubectl kustomize`` (or ``kustomize build``) whenever one is installed.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

KNOWN_KEYS = {"apiVersion", "kind", "resources", "patches", "namespace", "labels", "images"}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "RuntimeClass",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
}


class RenderError(Exception):
    """A kustomization this renderer cannot render faithfully, or a failed patch."""


def render(folder: str | Path) -> list[Doc]:
    """The resources the kustomization in ``folder`` produces."""
    folder = Path(folder)
    kfile = folder / "kustomization.yaml"
    if not kfile.is_file():
        raise RenderError(f"{folder}: no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(k) - KNOWN_KEYS
    if unknown:
        raise RenderError(f"{kfile}: unsupported keys {sorted(unknown)}")
    docs: list[Doc] = []
    for entry in k.get("resources", []):
        path = folder / entry
        docs.extend(render(path) if path.is_dir() else _load(path))
    for patch in k.get("patches", []):
        _apply_patch(docs, patch, folder, kfile)
    if "namespace" in k:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d.setdefault("metadata", {})["namespace"] = k["namespace"]
    for spec in k.get("labels", []):
        if spec.get("includeSelectors") or spec.get("includeTemplates"):
            raise RenderError(f"{kfile}: labels with includeSelectors/includeTemplates")
        for d in docs:
            labels = d.setdefault("metadata", {}).setdefault("labels", {})
            labels.update(spec.get("pairs", {}))
    for image in k.get("images", []):
        for d in docs:
            _set_image(d, image)
    return docs


def _load(path: Path) -> list[Doc]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise RenderError(f"{path}: every document needs apiVersion and kind")
    return docs


# --------------------------------------------------------------------------- patches


def _apply_patch(docs: list[Doc], patch: dict[str, Any], folder: Path, kfile: Path) -> None:
    target = patch.get("target")
    if not target or not {"kind", "name"} <= set(target):
        raise RenderError(f"{kfile}: every patch needs a target with kind and name")
    text = patch["patch"] if "patch" in patch else (folder / patch["path"]).read_text()
    ops = yaml.safe_load(text)
    if not isinstance(ops, list):
        raise RenderError(f"{kfile}: only JSON 6902 patches (a list of ops) are supported")
    hits = [d for d in docs if _matches(d, target)]
    if not hits:
        raise RenderError(f"{kfile}: patch target {target} matches no resource")
    for d in hits:
        for op in ops:
            _apply_op(d, op, f"{kfile}: {target['kind']}/{target['name']}")


def _matches(doc: Doc, target: dict[str, str]) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    meta = doc.get("metadata", {})
    return (
        doc["kind"] == target["kind"]
        and meta.get("name") == target["name"]
        and target.get("group", group) == group
        and target.get("version", version) == version
        and target.get("namespace", meta.get("namespace")) == meta.get("namespace")
    )


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise RenderError(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], where: str) -> Any:
    node = doc
    for p in parts:
        try:
            node = node[int(p)] if isinstance(node, list) else node[p]
        except (KeyError, IndexError, ValueError, TypeError):
            raise RenderError(f"{where}: path segment {p!r} not found") from None
    return node


def _apply_op(doc: Doc, op: dict[str, Any], where: str) -> None:
    name, parts = op["op"], _pointer(op["path"])
    where = f"{where} {name} {op['path']}"
    parent, last = _walk(doc, parts[:-1], where), parts[-1]
    value = copy.deepcopy(op.get("value"))
    if name == "test":
        if _walk(doc, parts, where) != value:
            raise RenderError(f"{where}: test failed")
    elif isinstance(parent, list):
        if name == "add":
            parent.insert(len(parent) if last == "-" else _index(parent, last, where, 1), value)
        elif name == "replace":
            parent[_index(parent, last, where)] = value
        elif name == "remove":
            del parent[_index(parent, last, where)]
        else:
            raise RenderError(f"{where}: unsupported op")
    elif isinstance(parent, dict):
        if name in ("replace", "remove") and last not in parent:
            raise RenderError(f"{where}: no such member")
        if name in ("add", "replace"):
            parent[last] = value
        elif name == "remove":
            del parent[last]
        else:
            raise RenderError(f"{where}: unsupported op")
    else:
        raise RenderError(f"{where}: parent is not a container")


def _index(seq: list[Any], token: str, where: str, extra: int = 0) -> int:
    if not token.isdigit() or int(token) >= len(seq) + extra:
        raise RenderError(f"{where}: bad list index {token!r}")
    return int(token)


# --------------------------------------------------------------------------- images


def _containers(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def _image_name(image: str) -> str:
    name = image.split("@", 1)[0]
    head, _, tail = name.rpartition(":")
    return head if head and "/" not in tail else name


def _set_image(doc: Doc, spec: dict[str, str]) -> None:
    for c in _containers(doc):
        image = c.get("image")
        if not isinstance(image, str) or _image_name(image) != spec["name"]:
            continue
        name = spec.get("newName", spec["name"])
        if "digest" in spec:
            c["image"] = f"{name}@{spec['digest']}"
        elif "newTag" in spec:
            c["image"] = f"{name}:{spec['newTag']}"
        else:
            rest = image[len(spec["name"]) :]
            c["image"] = name + rest


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    yaml.safe_dump_all(render(argv[0]), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
