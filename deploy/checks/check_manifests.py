"""Validates rendered Kubernetes manifests offline.

Each FILE is one rendered release (the output of `kubectl kustomize` or `helm template`). Every
object is validated against the Kubernetes JSON schemas bundled with kubernetes-validate, in
strict mode (unknown fields are errors), for each requested Kubernetes version. Custom
resources are validated against the schemas in crd_schemas.py. Then the objects are checked
against each other (k8s_rules.py).

Usage: check_manifests.py --flavor cpu|gpu [--k8s 1.29,1.37] [--adapter VALUES] FILE...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

import k8s_rules
from crd_schemas import CRD_SCHEMAS


def schema_problems(doc: dict, versions: list[str]) -> tuple[list[str], str]:
    """Problems of one object against the schemas, and how it was validated."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        validator = jsonschema.Draft7Validator(CRD_SCHEMAS[key])
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        where = lambda e: ".".join(str(p) for p in e.absolute_path) or "(root)"  # noqa: E731
        return [f"{where(e)}: {e.message}" for e in errors], "bundled CRD schema"
    problems = []
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path) or "(root)"
            problems.append(f"Kubernetes {version}: {path}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            problems.append(err.message)
    return problems, "Kubernetes " + ", ".join(versions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavor", choices=["cpu", "gpu"], required=True)
    parser.add_argument("--k8s", default="1.29,1.37", help="comma-separated Kubernetes versions")
    parser.add_argument(
        "--adapter", type=Path, help="prometheus-adapter Helm values with the HPA metric rule"
    )
    parser.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args()
    versions = [v.strip() for v in args.k8s.split(",") if v.strip()]

    failed = False
    exposed = None
    if args.adapter:
        exposed, problems = k8s_rules.adapter_metrics(yaml.safe_load(args.adapter.read_text()))
        for problem in problems:
            print(f"FAIL {args.adapter}: {problem}")
        failed |= bool(problems)

    for path in args.files:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        except (OSError, yaml.YAMLError) as err:
            print(f"FAIL {path}: {err}")
            failed = True
            continue
        problems = []
        how = set()
        for doc in docs:
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            found, method = schema_problems(doc, versions)
            how.add(method)
            problems += [f"{name}: {p}" for p in found]
        problems += k8s_rules.check_render(docs, args.flavor, exposed)
        for problem in problems:
            print(f"FAIL {path}: {problem}")
        if problems:
            failed = True
        else:
            kinds = ", ".join(sorted(d["kind"] for d in docs))
            schemas = "; ".join(sorted(how))
            print(f"ok   {path}: {len(docs)} objects ({kinds}); schemas: {schemas}; {args.flavor} rules pass")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
