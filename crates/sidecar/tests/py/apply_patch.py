"""Applies JSON Patches (RFC 6902) with the `jsonpatch` package, an
implementation independent of the injector's: reads a JSON list of
{"object": ..., "patch": [...]} on stdin, writes the list of patched
objects (or {"error": "..."}) on stdout."""
import json
import sys

import jsonpatch

out = []
for case in json.load(sys.stdin):
    try:
        out.append(jsonpatch.apply_patch(case["object"], case["patch"]))
    except Exception as e:  # reported to the test, which fails with it
        out.append({"error": f"{type(e).__name__}: {e}"})
json.dump(out, sys.stdout)
