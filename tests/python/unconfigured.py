"""The building blocks through the unmodified Dapr Python SDK, before any
component is configured: every call gets daprd's answer for a block with
nothing configured, and every RPC of Dapr's runtime service (as the SDK's
own proto lists them) answers with a clear status, never a hang.

Environment: DAPR_HTTP_PORT, DAPR_GRPC_PORT (read by the SDK). Prints one
line per check; exits non-zero on failure.
"""
import os
import sys

import grpc
from dapr.clients import DaprClient
from dapr.proto.runtime.v1 import dapr_pb2


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else ": " + str(detail)), flush=True)
    if not cond:
        sys.exit(1)


def grpc_error(call):
    try:
        call()
    except Exception as e:  # DaprGrpcError wraps the grpc.RpcError
        code = e.code() if callable(getattr(e, "code", None)) else None
        details = e.details() if callable(getattr(e, "details", None)) else str(e)
        return code, details
    return None, None


def main():
    with DaprClient() as client:
        code, msg = grpc_error(lambda: client.get_state("statestore", "k"))
        check("get_state: FailedPrecondition", code == grpc.StatusCode.FAILED_PRECONDITION, (code, msg))
        check("get_state: daprd's message", "state store" in msg and "not configured" in msg, msg)
        code, msg = grpc_error(lambda: client.save_state("statestore", "k", "v"))
        check("save_state: FailedPrecondition", code == grpc.StatusCode.FAILED_PRECONDITION, (code, msg))
        code, msg = grpc_error(lambda: client.execute_state_transaction("statestore", []))
        check("execute_state_transaction: FailedPrecondition", code == grpc.StatusCode.FAILED_PRECONDITION, (code, msg))
        code, msg = grpc_error(lambda: client.publish_event("pubsub", "orders", b"x"))
        check("publish_event: FailedPrecondition", code == grpc.StatusCode.FAILED_PRECONDITION, (code, msg))
        check("publish_event: daprd's message", msg == "no pubsub is configured", msg)
        code, msg = grpc_error(lambda: client.get_secret("vault", "k"))
        check("get_secret: FailedPrecondition", code == grpc.StatusCode.FAILED_PRECONDITION, (code, msg))
        check("get_secret: daprd's message", msg == "secret store is not configured", msg)
        code, msg = grpc_error(lambda: client.invoke_binding("out", "create", b"x"))
        check("invoke_binding: Internal", code == grpc.StatusCode.INTERNAL, (code, msg))
        code, msg = grpc_error(lambda: client.get_configuration("cfg", ["a"]))
        check("get_configuration: FailedPrecondition", code == grpc.StatusCode.FAILED_PRECONDITION, (code, msg))
        code, msg = grpc_error(lambda: client.try_lock("lockstore", "r", "me", 10))
        check("try_lock: FailedPrecondition", code == grpc.StatusCode.FAILED_PRECONDITION, (code, msg))
        check("try_lock: daprd's message", msg == "lock store is not configured", msg)

    # Every RPC the SDK's proto knows, called raw: a block's answer, or
    # Unimplemented naming the RPC.
    channel = grpc.insecure_channel("127.0.0.1:" + os.environ["DAPR_GRPC_PORT"])
    methods = dapr_pb2.DESCRIPTOR.services_by_name["Dapr"].methods
    check("the SDK's proto lists Dapr's RPCs", len(methods) > 30, len(methods))
    for m in methods:
        path = "/dapr.proto.runtime.v1.Dapr/" + m.name
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            call(b"", timeout=5)
            code, msg = grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            code, msg = e.code(), e.details() or ""
        if m.name == "InvokeService":
            check(path + ": served (an empty request is refused)", code == grpc.StatusCode.INVALID_ARGUMENT, (code, msg))
        elif code == grpc.StatusCode.UNIMPLEMENTED:
            check(path + ": Unimplemented names it", m.name in msg and "not implemented by Skiff yet" in msg, msg)
        elif m.name in ("GetMetadata", "SetMetadata"):
            check(path + ": served", code == grpc.StatusCode.OK, (code, msg))
        elif m.name == "TryLockAlpha1":
            # daprd checks the expiry (0 in an empty request) first.
            check(path + ": a non-positive expiry is refused", code == grpc.StatusCode.INVALID_ARGUMENT, (code, msg))
        else:
            check(path + ": a block's answer", code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INTERNAL), (code, msg))

    # The rich error rides in grpc-status-details-bin, as daprd sends it.
    call = channel.unary_unary("/dapr.proto.runtime.v1.Dapr/GetState", request_serializer=None, response_deserializer=None)
    try:
        call.with_call(b"", timeout=5)
        check("GetState fails", False, "no error")
    except grpc.RpcError as e:
        keys = [k for k, _ in (e.trailing_metadata() or [])]
        check("GetState carries ErrorInfo details", "grpc-status-details-bin" in keys, keys)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
