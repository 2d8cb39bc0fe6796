#!/usr/bin/env python3
"""Checks a node's answers against its own OpenAPI document with `jsonschema` (which
nobody here wrote): for each `TEMPLATE=PATH` argument, GETs PATH with the token and
validates the JSON body against the 200 response schema of TEMPLATE in the document
(JSON Schema 2020-12, the dialect of OpenAPI 3.1, with the document's components).
Prints one line per path; exits 1 on the first body that does not match.
For tests/tests/events.rs.

    check_responses.py BASE_URL TOKEN /api/v1/projects/{id}=/api/v1/projects/abc ...
"""

import json
import sys
import urllib.request

import jsonschema
import referencing
import referencing.jsonschema


def get(base: str, token: str, path: str):
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def main() -> int:
    base, token, *pairs = sys.argv[1:]
    document = get(base, token, "/api/v1/openapi.json")
    resource = referencing.Resource.from_contents(
        document, default_specification=referencing.jsonschema.DRAFT202012
    )
    registry = referencing.Registry().with_resource("urn:aamas:openapi", resource)
    for pair in pairs:
        template, path = pair.split("=", 1)
        content = document["paths"][template]["get"]["responses"]["200"]["content"]
        schema = content["application/json"]["schema"]
        # Resolve the response schema inside the document, so its $refs point at the
        # document's components.
        pointer = "/paths/" + template.replace("~", "~0").replace("/", "~1") + \
            "/get/responses/200/content/application~1json/schema"
        validator = jsonschema.Draft202012Validator(
            {"$ref": "urn:aamas:openapi#" + pointer}, registry=registry
        )
        body = get(base, token, path)
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
        if errors:
            error = errors[0]
            print(f"{path}: {error.message} at {list(error.path)}", file=sys.stderr)
            return 1
        if not any(key in schema for key in ("$ref", "properties", "items")):
            print(f"{path}: the document gives no schema for it ({schema})", file=sys.stderr)
            return 1
        print(f"{path}: matches {template}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
