"""Renders a kustomize-style overlay (resources + strategic-merge patches) into plain manifests.

Only what deploy/kubernetes uses: `resources` (files or directories with a kustomization.yaml)
and `patches` with `path`. Lists of named objects (containers, volumes, env) merge by `name`.
Usage: render_overlay.py OVERLAY_DIR OUT_DIR
"""
import os
import sys

import yaml


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x for x in base + patch):
        out = [dict(x) for x in base]
        for p in patch:
            for i, b in enumerate(out):
                if b["name"] == p["name"]:
                    out[i] = merge(b, p)
                    break
            else:
                out.append(p)
        return out
    return patch


def render(directory):
    k = load_docs(os.path.join(directory, "kustomization.yaml"))[0]
    docs = []
    for r in k.get("resources", []):
        p = os.path.join(directory, r)
        docs += render(p) if os.path.isdir(p) else load_docs(p)
    for patch in k.get("patches", []):
        for pd in load_docs(os.path.join(directory, patch["path"])):
            matched = False
            for i, d in enumerate(docs):
                if d["kind"] == pd["kind"] and d["metadata"]["name"] == pd["metadata"]["name"]:
                    docs[i] = merge(d, pd)
                    matched = True
            if not matched:
                sys.exit(f"patch {patch['path']} matches no resource")
    return docs


def main():
    overlay, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    for d in render(overlay):
        name = f"{d['kind'].lower()}-{d['metadata']['name']}.yaml"
        with open(os.path.join(out, name), "w") as f:
            yaml.safe_dump(d, f)
        print(os.path.join(out, name))


if __name__ == "__main__":
    main()
