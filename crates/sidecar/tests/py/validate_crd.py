"""Validates the documents of the YAML files argv[2:] against the CRD schemas
of argv[1] (JSON from py/vendor_crd_schemas.py, keyed "group/version/Kind"),
as the API server would with `kubectl apply` (field validation Strict, its
default since Kubernetes 1.27):
- the openAPIV3Schema, with an unknown field an error (a structural schema
  prunes what it does not declare; Strict refuses it) except where the schema
  says x-kubernetes-preserve-unknown-fields;
- x-kubernetes-int-or-string, nullable;
- metadata: a DNS-1123 subdomain name, a namespace for a Namespaced kind,
  string labels and annotations (ObjectMeta, which the API server checks for
  every kind).
CEL rules (x-kubernetes-validations) are not evaluated: a document that sets
a field the schema gives rules is an error, so none is passed unchecked.
Prints one line per document, INFO or ERROR; exits 1 on any error."""
import json
import re
import sys

import jsonschema
import yaml

NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def to_json_schema(node, path, cel):
    """The JSON Schema of an openAPIV3Schema node; collects CEL rule paths."""
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "properties":
            out[k] = {p: to_json_schema(s, path + [p], cel) for p, s in v.items()}
        elif k == "items":
            out[k] = to_json_schema(v, path + ["*"], cel)
        elif k == "additionalProperties" and isinstance(v, dict):
            out[k] = to_json_schema(v, path + ["*"], cel)
        elif k in ("allOf", "anyOf", "oneOf"):
            out[k] = [to_json_schema(s, path, cel) for s in v]
        elif k == "not":
            out[k] = to_json_schema(v, path, cel)
        elif k == "x-kubernetes-validations":
            cel.append((path, [r.get("message") or r["rule"] for r in v]))
        elif k.startswith("x-kubernetes-") or k == "format":
            # list/map types are about merges; formats int32/int64/byte/date-time
            # are not checked (the fields we set have none).
            continue
        else:
            out[k] = v
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        out.pop("nullable", None)
    out.pop("nullable", None)
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def present(doc, path):
    """Whether the document has a value at a schema path ("*": any item or key)."""
    if not path:
        return True
    head, rest = path[0], path[1:]
    if head == "*":
        items = doc if isinstance(doc, list) else list(doc.values()) if isinstance(doc, dict) else []
        return any(present(i, rest) for i in items)
    return isinstance(doc, dict) and head in doc and present(doc[head], rest)


schemas = json.load(open(sys.argv[1]))
failed = False
for path in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(path)):
        if doc is None:
            continue
        key = f"{doc.get('apiVersion')}/{doc.get('kind')}"
        what = f"{path} {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        errors = []
        crd = schemas.get(key)
        if crd is None:
            errors.append(f"no schema for {key} (have {sorted(k for k in schemas if k != '_source')})")
        else:
            cel = []
            schema = to_json_schema(crd["schema"], [], cel)
            v = jsonschema.Draft7Validator(schema)
            for e in sorted(v.iter_errors(doc), key=lambda e: list(e.path)):
                errors.append(f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}")
            for p, rules in cel:
                if present(doc, p):
                    errors.append(f"{'.'.join(p)}: has CEL rules this check cannot evaluate: {rules}")
            meta = doc.get("metadata") or {}
            name = meta.get("name")
            if not isinstance(name, str) or len(name) > 253 or not NAME.match(name):
                errors.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain")
            if crd["scope"] == "Namespaced" and not isinstance(meta.get("namespace"), str):
                errors.append("metadata.namespace: a Namespaced kind needs one here")
            for m in ("labels", "annotations"):
                for k, val in (meta.get(m) or {}).items():
                    if not isinstance(val, str):
                        errors.append(f"metadata.{m}.{k}: {val!r} is not a string")
            unknown = set(meta) - {"name", "namespace", "labels", "annotations"}
            if unknown:
                errors.append(f"metadata: fields this check does not know: {sorted(unknown)}")
        if errors:
            failed = True
            for e in errors:
                print(f"ERROR {what}: {e}")
        else:
            print(f"INFO {what} passed against the {key} CRD schema")
sys.exit(1 if failed else 0)
