"""Output bindings through the unmodified Dapr Python SDK (InvokeBinding):
create and get on bindings.localstorage.

Environment: DAPR_HTTP_PORT, DAPR_GRPC_PORT (read by the SDK), BINDING.
Prints one line per check and {"done": "bindings"} at the end.
"""
import json
import os
import sys

from dapr.clients import DaprClient


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else ": " + str(detail)), flush=True)
    if not cond:
        sys.exit(1)


def main():
    b = os.environ["BINDING"]
    with DaprClient() as c:
        r = c.invoke_binding(b, "create", data=b"from python", binding_metadata={"fileName": "py.txt"})
        check("create answers the file name", json.loads(r.data) == {"fileName": "py.txt"}, r.data)
        r = c.invoke_binding(b, "get", binding_metadata={"fileName": "py.txt"})
        check("get reads it back verbatim", r.data == b"from python", r.data)
    print(json.dumps({"done": "bindings"}), flush=True)


if __name__ == "__main__":
    main()
