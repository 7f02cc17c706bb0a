"""The unmodified Dapr Python SDK's state and secrets calls against Skiff.

Environment: DAPR_HTTP_PORT, DAPR_GRPC_PORT (read by the SDK), STORE (the
state store's name), SECRETS (a secret store holding db-password=s3cret).
Prints one line per check; exits non-zero on the first failure.
"""
import os
import sys

import grpc
from dapr.clients import DaprClient
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._state import Concurrency, Consistency, StateItem, StateOptions


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else ": " + str(detail)), flush=True)
    if not cond:
        sys.exit(1)


def code_of(e):
    c = getattr(e, "code", None)
    return c() if callable(c) else c


def main():
    store = os.environ["STORE"]
    secrets = os.environ["SECRETS"]
    with DaprClient() as c:
        c.save_state(store, "order-1", "first")
        got = c.get_state(store, "order-1")
        check("save_state then get_state", got.data == b"first", got.data)
        check("get_state returns an etag", got.etag != "", got.etag)

        raw = bytes(range(256))
        c.save_state(store, "blob", raw)
        check("bytes round-trip byte-exact", c.get_state(store, "blob").data == raw)

        missing = c.get_state(store, "never-written")
        check("a missing key is empty", missing.data == b"" and missing.etag == "", missing)

        # A write with the current etag passes; a stale one is refused.
        etag = got.etag
        c.save_state(store, "order-1", "second", etag=etag)
        try:
            c.save_state(store, "order-1", "third", etag=etag)
            check("a stale etag is refused", False, "no error raised")
        except grpc.RpcError as e:
            check("a stale etag is Aborted", code_of(e) == grpc.StatusCode.ABORTED, e)
        check("the refused write changed nothing", c.get_state(store, "order-1").data == b"second")

        fw = StateOptions(concurrency=Concurrency.first_write, consistency=Consistency.strong)
        c.save_state(store, "fw", "one", options=fw)
        try:
            c.save_state(store, "fw", "two", options=fw)
            check("first-write without an etag is refused", False, "no error raised")
        except grpc.RpcError:
            check("first-write without an etag is refused", True)

        c.save_bulk_state(store, [StateItem(key="b1", value="v1"), StateItem(key="b2", value="v2")])
        bulk = c.get_bulk_state(store, ["b1", "b2", "nope"]).items
        by_key = {i.key: i for i in bulk}
        check("get_bulk_state answers every key", set(by_key) == {"b1", "b2", "nope"}, by_key)
        check("get_bulk_state values", by_key["b1"].data == b"v1" and by_key["b2"].data == b"v2", bulk)
        check("get_bulk_state missing key is empty", by_key["nope"].data == b"", by_key["nope"])

        c.execute_state_transaction(store, [
            TransactionalStateOperation(key="t1", data="x", operation_type=TransactionOperationType.upsert),
            TransactionalStateOperation(key="b1", operation_type=TransactionOperationType.delete),
            TransactionalStateOperation(key="t2", data="y"),
        ])
        check("transaction upserts", c.get_state(store, "t1").data == b"x" and c.get_state(store, "t2").data == b"y")
        check("transaction deletes", c.get_state(store, "b1").data == b"")

        try:
            c.execute_state_transaction(store, [
                TransactionalStateOperation(key="t3", data="z"),
                TransactionalStateOperation(key="t1", data="w", etag="1" if os.environ.get("NUMERIC") else
                                            "00000000-0000-4000-8000-000000000000"),
            ])
            check("a transaction with a wrong etag fails", False, "no error raised")
        except grpc.RpcError:
            check("a transaction with a wrong etag fails", True)

        cur = c.get_state(store, "t2")
        c.delete_state(store, "t2", etag=cur.etag)
        check("delete_state with its etag", c.get_state(store, "t2").data == b"")
        c.delete_state(store, "t2")
        check("deleting a missing key is fine", True)

        try:
            c.get_state("no-such-store", "k")
            check("an unknown store fails", False, "no error raised")
        except grpc.RpcError as e:
            check("an unknown store is InvalidArgument", code_of(e) == grpc.StatusCode.INVALID_ARGUMENT, e)

        s = c.get_secret(secrets, "db-password")
        check("get_secret", s.secret == {"db-password": "s3cret"}, s.secret)
        bulk = c.get_bulk_secret(secrets).secrets
        check("get_bulk_secret", bulk.get("db-password") == {"db-password": "s3cret"}, bulk)
    print('{"done": "state"}', flush=True)


if __name__ == "__main__":
    main()
