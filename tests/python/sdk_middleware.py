"""The unmodified Dapr Python SDK calling through a sidecar whose HTTP API
is behind a `middleware.http.bearer` pipeline.

Environment: DAPR_HTTP_PORT (read by the SDK), TOKEN (a valid JWT).
Prints what each call got; exits non-zero when the SDK itself breaks.
"""
import os

from dapr.clients import DaprClient


def status_of(err):
    for attr in ("status_code", "_status_code", "status"):
        v = getattr(err, attr, None)
        if isinstance(v, int):
            return v
    text = str(err)
    for code in ("401", "403", "500"):
        if code in text:
            return int(code)
    return text


def main():
    os.environ["DAPR_API_METHOD_INVOCATION_PROTOCOL"] = "http"
    token = os.environ["TOKEN"]
    with DaprClient() as client:
        resp = client.invoke_method("callee", "orders", data=b"", http_verb="GET",
                                    metadata=(("authorization", "Bearer " + token),))
        print("with token: 200", resp.headers.get("x-echo-uri", [""])[0]
              if isinstance(resp.headers.get("x-echo-uri"), list) else resp.headers.get("x-echo-uri"),
              flush=True)
        try:
            client.invoke_method("callee", "orders", data=b"", http_verb="GET")
            print("without token: passed (wrong)", flush=True)
        except Exception as e:  # the SDK raises its own error types
            print("without token:", status_of(e), flush=True)


if __name__ == "__main__":
    main()
