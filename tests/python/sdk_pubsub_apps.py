"""Subscriber apps written with the unmodified Dapr Python SDK.

Usage: sdk_pubsub_apps.py grpc PORT OUT   (a dapr.ext.grpc.App)
       sdk_pubsub_apps.py fastapi PORT OUT (FastAPI with dapr.ext.fastapi)
Each event a handler gets is appended to OUT as one JSON line
{"app", "topic", "data"}.
"""
import json
import sys


def record(out, app, topic, data):
    with open(out, "a") as f:
        f.write(json.dumps({"app": app, "topic": topic, "data": data}) + "\n")


def grpc_app(port, out):
    from dapr.ext.grpc import App, Rule

    app = App()

    @app.subscribe(pubsub_name="ps", topic="orders")
    def orders(event) -> None:
        record(out, "grpc", "orders", json.loads(event.Data()))

    @app.subscribe(pubsub_name="ps", topic="routed", rule=Rule('event.type == "big"', 1))
    def big(event) -> None:
        record(out, "grpc", "routed-big", event.Data().decode())

    app.register_health_check(lambda: None)
    app.run(port)


def fastapi_app(port, out):
    import uvicorn
    from fastapi import Body, FastAPI
    from dapr.ext.fastapi import DaprApp

    app = FastAPI()
    dapr_app = DaprApp(app)

    @dapr_app.subscribe(pubsub="ps", topic="fast")
    def fast(event=Body()):
        record(out, "fastapi", "fast", event["data"])

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    kind, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    {"grpc": grpc_app, "fastapi": fastapi_app}[kind](port, out)
