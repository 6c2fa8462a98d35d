"""Validates Zipkin v2 JSON (stdin) against the ListOfSpans definition of a Zipkin API spec (argv[1])."""
import json
import sys

import jsonschema
import yaml

spec = yaml.safe_load(open(sys.argv[1]))
schema = {"$ref": "#/definitions/ListOfSpans", "definitions": spec["definitions"]}
spans = json.load(sys.stdin)
validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())
errors = sorted(validator.iter_errors(spans), key=lambda e: list(e.path))
for e in errors:
    print(f"{list(e.path)}: {e.message}")
sys.exit(1 if errors else 0)
