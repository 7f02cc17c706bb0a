"""The configuration API through the unmodified Dapr Python SDK:
get_configuration, subscribe_configuration (SubscribeConfigurationAlpha1, a
server stream read by the SDK's watcher thread) and
unsubscribe_configuration, on configuration.redis.

Environment: DAPR_HTTP_PORT, DAPR_GRPC_PORT (read by the SDK), STORE,
REDIS_PORT (the test sets keys with redis-cli). Prints one line per check
and {"done": "configuration"} at the end.
"""
import json
import os
import subprocess
import sys
import threading
import time

from dapr.clients import DaprClient


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else ": " + str(detail)), flush=True)
    if not cond:
        sys.exit(1)


def redis(*args):
    subprocess.run(["redis-cli", "-p", os.environ["REDIS_PORT"], *args], check=True, capture_output=True)


def main():
    store = os.environ["STORE"]
    redis("SET", "greeting", "hello||1")
    with DaprClient() as c:
        r = c.get_configuration(store_name=store, keys=["greeting", "missing"], config_metadata={})
        check("get_configuration reads the item", r.items["greeting"].value == "hello", r.items)
        check("its version", r.items["greeting"].version == "1", r.items["greeting"].version)
        check("a missing key is left out", "missing" not in r.items, r.items)

        seen = []
        got = threading.Event()

        def handler(sub_id, resp):
            for k, item in resp.items.items():
                seen.append((k, item.value))
                if k == "greeting" and item.value == "bonjour":
                    got.set()

        sub_id = c.subscribe_configuration(store_name=store, keys=["greeting"], handler=handler, config_metadata={})
        check("subscribe_configuration gives an id", bool(sub_id), sub_id)
        time.sleep(0.5)
        redis("SET", "greeting", "bonjour||2")
        check("the handler sees the change", got.wait(15), seen)
        ok = c.unsubscribe_configuration(store_name=store, id=sub_id)
        check("unsubscribe_configuration", ok is True, ok)
    print(json.dumps({"done": "configuration"}), flush=True)


if __name__ == "__main__":
    main()
