// The unmodified Dapr JS SDK (@dapr/dapr, HTTP: its default) against a
// Skiff sidecar's state API. Environment: DAPR_HTTP_PORT, STORE. Prints one
// line per check; exits non-zero on the first failure.
"use strict";
const { DaprClient, LogLevel } = require("@dapr/dapr");

function check(name, cond, detail) {
  console.log((cond ? "ok   " : "FAIL ") + name + (cond ? "" : ": " + JSON.stringify(detail)));
  if (!cond) process.exit(1);
}

async function main() {
  const store = process.env.STORE;
  const client = new DaprClient({
    daprHost: "127.0.0.1",
    daprPort: process.env.DAPR_HTTP_PORT,
    logger: { level: LogLevel.Error },
  });
  const saved = await client.state.save(store, [
    { key: "js-1", value: { order: 1, items: ["a", "b"] } },
    { key: "js-2", value: "plain" },
    { key: "js-3", value: 42 },
  ]);
  check("save", !saved.error, saved.error && String(saved.error));
  const one = await client.state.get(store, "js-1");
  // daprd re-encodes saved JSON as Go does (object keys sorted), so compare
  // values, not text.
  check("get returns the JSON value", one && one.order === 1 && JSON.stringify(one.items) === '["a","b"]', one);
  check("get of a string", (await client.state.get(store, "js-2")) === "plain");
  check("get of a number", (await client.state.get(store, "js-3")) === 42);
  const missing = await client.state.get(store, "js-never");
  check("get of a missing key is empty", missing === "" || missing === undefined || missing === null, missing);

  const bulk = await client.state.getBulk(store, ["js-1", "js-2", "js-never"]);
  const byKey = Object.fromEntries(bulk.map((i) => [i.key, i]));
  check("getBulk answers every key", bulk.length === 3 && "js-never" in byKey, bulk);
  check("getBulk values", byKey["js-2"].data === "plain" && byKey["js-1"].data.order === 1, bulk);
  check("getBulk etags", typeof byKey["js-1"].etag === "string" && byKey["js-1"].etag.length > 0, bulk);
  check("getBulk missing key has no data", byKey["js-never"].data === undefined, byKey["js-never"]);

  await client.state.transaction(store, [
    { operation: "upsert", request: { key: "js-t", value: "in-tx" } },
    { operation: "delete", request: { key: "js-2" } },
  ]);
  check("transaction upsert", (await client.state.get(store, "js-t")) === "in-tx");
  const gone = await client.state.get(store, "js-2");
  check("transaction delete", gone === "" || gone === undefined || gone === null, gone);

  const del = await client.state.delete(store, "js-1");
  check("delete", !del.error, del.error && String(del.error));
  const after = await client.state.get(store, "js-1");
  check("deleted key is empty", after === "" || after === undefined || after === null, after);

  let failed = false;
  try {
    await client.state.transaction("no-such-store", [{ operation: "upsert", request: { key: "k", value: 1 } }]);
  } catch (e) {
    failed = true;
  }
  check("an unknown store fails", failed);
  console.log('{"done": "js"}');
}

main().catch((e) => {
  console.log("FAIL unexpected error: " + (e && e.stack ? e.stack : e));
  process.exit(1);
});
