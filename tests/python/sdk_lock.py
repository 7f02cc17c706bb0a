"""The distributed lock through the unmodified Dapr Python SDK
(TryLockAlpha1 / UnlockAlpha1 over gRPC): acquire, contention, owner
checks, expiry, and the SDK's context-manager form.

Environment: DAPR_HTTP_PORT, DAPR_GRPC_PORT (read by the SDK), STORE.
Prints one line per check and {"done": "lock"} at the end.
"""
import json
import os
import sys
import time

from dapr.clients import DaprClient
from dapr.clients.grpc._response import UnlockResponseStatus


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else ": " + str(detail)), flush=True)
    if not cond:
        sys.exit(1)


def main():
    store = os.environ["STORE"]
    with DaprClient() as c:
        r = c.try_lock(store, "py-res", "alice", expiry_in_seconds=60)
        check("try_lock acquires", r.success, r)
        r = c.try_lock(store, "py-res", "bob", expiry_in_seconds=60)
        check("a held lock is refused (success=false, no error)", not r.success, r)
        u = c.unlock(store, "py-res", "bob")
        check("unlock by another owner", u.status == UnlockResponseStatus.lock_belongs_to_others, u.status)
        u = c.unlock(store, "py-missing", "alice")
        check("unlock of no lock", u.status == UnlockResponseStatus.lock_does_not_exist, u.status)
        u = c.unlock(store, "py-res", "alice")
        check("unlock by its owner", u.status == UnlockResponseStatus.success, u.status)
        r = c.try_lock(store, "py-short", "alice", expiry_in_seconds=1)
        check("short lock acquired", r.success, r)
        time.sleep(2.2)
        r = c.try_lock(store, "py-short", "bob", expiry_in_seconds=5)
        check("a lock never outlives its expiry", r.success, r)
        with c.try_lock(store, "py-ctx", "carol", expiry_in_seconds=30) as held:
            check("context manager holds it", held.success, held)
            check("inside, others are refused", not c.try_lock(store, "py-ctx", "dave", 30).success)
        r = c.try_lock(store, "py-ctx", "dave", expiry_in_seconds=30)
        check("leaving the block unlocked it", r.success, r)
    print(json.dumps({"done": "lock"}), flush=True)


if __name__ == "__main__":
    main()
