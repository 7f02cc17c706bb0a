"""A gRPC app written with the Dapr Python SDK's dapr.ext.grpc.App.

Usage: grpc_app.py PORT
Method `say` answers "py says: <data>" and echoes the caller's app id.
"""
import sys

from dapr.clients.grpc._request import InvokeMethodRequest
from dapr.clients.grpc._response import InvokeMethodResponse
from dapr.ext.grpc import App

app = App()


@app.method(name="say")
def say(request: InvokeMethodRequest) -> InvokeMethodResponse:
    caller = dict(request.metadata).get("dapr-caller-app-id", ["?"])
    if isinstance(caller, (list, tuple)):
        caller = caller[0]
    text = "py says: " + request.text() + " (caller " + str(caller) + ")"
    return InvokeMethodResponse(data=text.encode(), content_type="text/plain")


# Answers the sidecar's AppCallbackHealthCheck probes.
app.register_health_check(lambda: None)


if __name__ == "__main__":
    app.run(int(sys.argv[1]))
