"""The unmodified Dapr Python SDK's pub/sub calls against Skiff.

Environment: DAPR_HTTP_PORT, DAPR_GRPC_PORT (read by the SDK).
publish_event (JSON and text), publish_events (BulkPublishEvent), and a
streaming subscription (DaprClient.subscribe). Prints one line per check;
exits non-zero on the first failure.
"""
import json
import sys

from dapr.clients import DaprClient


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else ": " + str(detail)), flush=True)
    if not cond:
        sys.exit(1)


def main():
    with DaprClient() as c:
        c.publish_event("ps", "orders", json.dumps({"n": 1}), data_content_type="application/json")
        check("publish_event json", True)
        c.publish_event("ps", "routed", "big one",
                        publish_metadata={"cloudevent.type": "big"})
        check("publish_event with a CloudEvent override", True)
        r = c.publish_events("ps", "orders", [json.dumps({"n": 2}), json.dumps({"n": 3})],
                             data_content_type="application/json")
        check("publish_events", len(r.failed_entries) == 0, r.failed_entries)
        c.publish_event("ps", "fast", json.dumps({"f": 1}), data_content_type="application/json")
        check("publish_event to the FastAPI app", True)

        sub = c.subscribe(pubsub_name="ps", topic="stream")
        try:
            c.publish_event("ps", "stream", "hello stream")
            msg = sub.next_message()
            check("streaming subscription gets the event",
                  msg is not None and msg.data() == "hello stream" and msg.topic() == "stream",
                  msg and (msg.data(), msg.topic()))
            sub.respond_success(msg)
        finally:
            sub.close()
    print(json.dumps({"done": "pubsub"}), flush=True)


if __name__ == "__main__":
    main()
