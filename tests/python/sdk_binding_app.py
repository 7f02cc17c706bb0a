"""A gRPC app with the Dapr Python SDK's dapr.ext.grpc.App that reads the
input binding `ticks` (ListInputBindings / OnBindingEvent) and prints one
line per event.

Usage: sdk_binding_app.py PORT
"""
import sys

from dapr.ext.grpc import App, BindingRequest

app = App()


@app.binding("ticks")
def ticks(request: BindingRequest):
    print("tick " + str(sorted(dict(request.binding_metadata).keys())), flush=True)


app.register_health_check(lambda: None)

if __name__ == "__main__":
    app.run(int(sys.argv[1]))
