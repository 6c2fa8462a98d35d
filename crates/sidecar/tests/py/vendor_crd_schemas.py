"""Writes the openAPIV3Schema of each served version of the CRDs in argv[2:]
(CustomResourceDefinition YAML files) to argv[1] as JSON, keyed by
"group/version/Kind", without the description texts (they are most of the
size), and argv[2] as "_source". Regenerates data/cert-manager-crds.json:
  python3 py/vendor_crd_schemas.py data/cert-manager-crds.json "SOURCE" \
    cert-manager.io_certificates.yaml cert-manager.io_issuers.yaml
with the files of cert-manager's deploy/crds/ (Apache-2.0)."""
import json
import sys

import yaml


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


out = {"_source": sys.argv[2]}
for path in sys.argv[3:]:
    for crd in yaml.safe_load_all(open(path)):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for v in spec["versions"]:
            if v.get("served"):
                key = f"{spec['group']}/{v['name']}/{spec['names']['kind']}"
                out[key] = {"scope": spec["scope"], "schema": strip(v["schema"]["openAPIV3Schema"])}
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=1, sort_keys=True)
    f.write("\n")
