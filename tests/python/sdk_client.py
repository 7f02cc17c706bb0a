"""Drives a Skiff sidecar with the unmodified Dapr Python SDK.

Environment: DAPR_HTTP_PORT, DAPR_GRPC_PORT (read by the SDK), and
DAPR_API_METHOD_INVOCATION_PROTOCOL (http or grpc) to pick how
invoke_method travels. Prints one line per check; exits non-zero on failure.
"""
import json
import os
import sys

import grpc
from dapr.clients import DaprClient


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else ": " + str(detail)), flush=True)
    if not cond:
        sys.exit(1)


def echo_message(payload: bytes) -> bytes:
    # skiff.echo.v1.EchoMessage { bytes payload = 1; } encoded by hand: a
    # plain grpcio client needs no generated stubs to use proxy mode.
    return b"\x0a" + bytes([len(payload)]) + payload


def main():
    proto = os.environ.get("DAPR_API_METHOD_INVOCATION_PROTOCOL", "http")
    with DaprClient() as client:
        resp = client.invoke_method("web", "orders/7", data=b'{"n":1}', http_verb="POST",
                                    content_type="application/json")
        check(proto + ": invoke_method to an HTTP app returns its body", resp.data == b'{"n":1}', resp.data)

        resp = client.invoke_method("pyapp", "say", data=b"hello", http_verb="POST")
        check(proto + ": invoke_method to a dapr.ext.grpc App", resp.text().startswith("py says: hello"), resp.text())
        check(proto + ": the App sees the caller's app id", "(caller sdkcaller)" in resp.text(), resp.text())

        try:
            client.invoke_method("nobody", "x", data=b"", http_verb="GET")
            check(proto + ": unknown app fails", False, "no error raised")
        except Exception as e:  # the SDK raises DaprInternalError / grpc errors
            check(proto + ": unknown app fails", "nobody" in str(e), e)

    if proto == "http":
        # Proxy mode with a plain grpcio client: unary and bidi streaming.
        target = "127.0.0.1:" + os.environ["DAPR_GRPC_PORT"]
        with grpc.insecure_channel(target) as ch:
            md = (("dapr-app-id", "rpc"),)
            unary = ch.unary_unary("/skiff.echo.v1.Echo/Unary")
            out = unary(echo_message(b"via-proxy"), metadata=md, timeout=5)
            check("grpcio proxy unary", b"via-proxy" in out, out)
            bidi = ch.stream_stream("/skiff.echo.v1.Echo/Bidi")
            msgs = [echo_message(("m%d" % i).encode()) for i in range(5)]
            got = list(bidi(iter(msgs), metadata=md, timeout=5))
            check("grpcio proxy bidi streaming", got == msgs, got)
    print(json.dumps({"done": proto}))


if __name__ == "__main__":
    main()
