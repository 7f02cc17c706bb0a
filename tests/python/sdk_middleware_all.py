"""The unmodified Dapr Python SDK calling through pipelines of every other
middleware type: the caller's HTTP API behind routeralias, routerchecker,
opa, uppercase and ratelimit; the callee's app behind
oauth2clientcredentials.

Environment: DAPR_HTTP_PORT (read by the SDK). Prints one line per case;
exits non-zero when the SDK itself breaks.
"""
import json
import os

from dapr.clients import DaprClient


def status_of(err):
    for attr in ("status_code", "_status_code", "status"):
        v = getattr(err, attr, None)
        if isinstance(v, int):
            return v
    text = str(err)
    for code in ("400", "403", "429", "500"):
        if code in text:
            return int(code)
    return text


def header(resp, name):
    v = resp.headers.get(name)
    return v[0] if isinstance(v, list) else v


def attempt(client, label, method, key="k1", data=b""):
    try:
        resp = client.invoke_method("callee", method, data=data, http_verb="POST",
                                    metadata=(("x-api-key", key),))
        return resp
    except Exception as e:  # the SDK raises its own error types
        print(label + ":", status_of(e), flush=True)
        return None


def main():
    os.environ["DAPR_API_METHOD_INVOCATION_PROTOCOL"] = "http"
    with DaprClient() as client:
        resp = attempt(client, "aliased", "old", data=b"hello, sdk")
        if resp is not None:
            headers = json.loads(header(resp, "x-echo-headers") or "{}")
            print("aliased: 200", header(resp, "x-echo-uri"), resp.data.decode(),
                  headers.get("authorization", "none"), flush=True)
        if attempt(client, "checked", "Bad_Name") is not None:
            print("checked: passed (wrong)", flush=True)
        if attempt(client, "opa", "orders", key="k2") is not None:
            print("opa: passed (wrong)", flush=True)
        # ratelimit: one a second per path; a burst on one path meets 429.
        limited = 0
        for _ in range(6):
            if attempt(client, "limited", "burst") is None:
                limited += 1
        print("limited count:", limited, flush=True)


if __name__ == "__main__":
    main()
