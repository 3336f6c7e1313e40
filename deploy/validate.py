"""Validates every manifest under deploy/ offline; run by deploy/validate.sh in its venv.

- each kustomization (the base through deploy/, and each overlay) renders with `kubectl
  kustomize` and every object in it passes `kubernetes-validate --strict` for Kubernetes 1.28
  and for the newest version the package knows;
- the MirrorPolicy CRD's schema is structural (every node typed, nothing typed inside the
  logical combinators), as the API server requires;
- every policy of the ConfigMap's config file, and every MirrorPolicy in deploy/examples,
  validates against that schema: the file and the custom resource share one shape.
"""

import json
import pathlib
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent
KUSTOMIZATIONS = [DEPLOY, DEPLOY / "overlays" / "privileged", DEPLOY / "overlays" / "pod-hook"]
OLDEST = "1.28.0"
COMBINATORS = ("allOf", "anyOf", "oneOf", "not")


def render(directory):
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def validate_objects(label, objects, versions):
    failures = []
    for version in versions:
        for obj in objects:
            name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                failures.append(f"{label}: {name} against {version}: {err.message}")
            except Exception as err:  # unknown kinds, versions
                failures.append(f"{label}: {name} against {version}: {err}")
    return failures


def structural_errors(schema, path="openAPIV3Schema", inside_combinator=False):
    errors = []
    if not isinstance(schema, dict):
        return [f"{path}: not an object"]
    typed = "type" in schema
    exempt = schema.get("x-kubernetes-int-or-string") or schema.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if inside_combinator and (typed or "default" in schema or "description" in schema):
        errors.append(f"{path}: type, default or description inside a logical combinator")
    if not inside_combinator and not typed and not exempt:
        errors.append(f"{path}: no type")
    for key, sub in schema.get("properties", {}).items():
        errors += structural_errors(sub, f"{path}.properties.{key}", inside_combinator)
    if isinstance(schema.get("items"), dict):
        errors += structural_errors(schema["items"], f"{path}.items", inside_combinator)
    if isinstance(schema.get("additionalProperties"), dict):
        errors += structural_errors(
            schema["additionalProperties"], f"{path}.additionalProperties", inside_combinator
        )
    for combinator in COMBINATORS:
        subs = schema.get(combinator)
        for index, sub in enumerate(subs if isinstance(subs, list) else [subs] if subs else []):
            errors += structural_errors(sub, f"{path}.{combinator}[{index}]", True)
    return errors


def closed(schema):
    """The schema as JSON Schema that also refuses unknown fields, as the API server prunes
    them (and a config file refuses them)."""
    schema = json.loads(json.dumps(schema))

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node.setdefault("additionalProperties", False)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def main():
    newest = kubernetes_validate.latest_version()
    versions = [OLDEST, newest]
    failures = []
    rendered = {}
    for directory in KUSTOMIZATIONS:
        label = str(directory.relative_to(DEPLOY.parent))
        rendered[label] = render(directory)
        failures += validate_objects(label, rendered[label], versions)
        print(f"{label}: {len(rendered[label])} objects checked against {', '.join(versions)}")

    base = next(iter(rendered.values()))
    crd = next(o for o in base if o["kind"] == "CustomResourceDefinition")
    [version] = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    failures += [f"CRD schema: {e}" for e in structural_errors(schema)]
    spec_schema = closed(schema["properties"]["spec"])

    config_map = next(o for o in base if o["kind"] == "ConfigMap")
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    for policy in config.get("policies", []):
        body = {k: v for k, v in policy.items() if k != "name"}
        for err in jsonschema.Draft4Validator(spec_schema).iter_errors(body):
            failures.append(f"ConfigMap policy {policy.get('name')}: {err.message}")
    examples = sorted((DEPLOY / "examples").glob("*.yaml"))
    for example in examples:
        for doc in yaml.safe_load_all(example.read_text()):
            if doc and doc.get("kind") == "MirrorPolicy":
                for err in jsonschema.Draft4Validator(spec_schema).iter_errors(doc["spec"]):
                    failures.append(f"{example.name}: {err.message}")
    print(f"CRD schema structural; {len(config.get('policies', []))} config policies and "
          f"{len(examples)} example files match it")

    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
