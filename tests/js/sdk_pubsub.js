// The unmodified Dapr JS SDK (@dapr/dapr, HTTP) against Skiff's pub/sub:
// its DaprServer subscribes (served at /dapr/subscribe), its DaprClient
// publishes, and the handler gets the data. Environment: DAPR_HTTP_PORT
// (the sidecar), APP_PORT (where this app's server listens).
"use strict";
const { DaprClient, DaprServer, LogLevel } = require("@dapr/dapr");

function check(name, cond, detail) {
  console.log((cond ? "ok   " : "FAIL ") + name + (cond ? "" : ": " + JSON.stringify(detail)));
  if (!cond) process.exit(1);
}

async function main() {
  const clientOptions = {
    daprHost: "127.0.0.1",
    daprPort: process.env.DAPR_HTTP_PORT,
    logger: { level: LogLevel.Error },
  };
  const server = new DaprServer({
    serverHost: "127.0.0.1",
    serverPort: process.env.APP_PORT,
    clientOptions,
    logger: { level: LogLevel.Error },
  });
  const got = [];
  await server.pubsub.subscribe("ps", "jstopic", async (data) => {
    got.push(data);
  });
  await server.start();
  const client = new DaprClient(clientOptions);
  // The sidecar reads /dapr/subscribe once the port answers: wait for it.
  for (let i = 0; i < 100; i++) {
    const m = await client.metadata.get();
    if ((m.subscriptions || []).some((s) => s.topic === "jstopic")) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const r = await client.pubsub.publish("ps", "jstopic", { js: 1 });
  check("publish", !r.error, r.error && String(r.error));
  const r2 = await client.pubsub.publish("ps", "jstopic", "text from js");
  check("publish text", !r2.error, r2.error && String(r2.error));
  for (let i = 0; i < 100 && got.length < 2; i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  check("the server's handler got the JSON event", got.some((d) => d && d.js === 1), got);
  check("the server's handler got the text event", got.some((d) => d === "text from js"), got);
  await server.stop();
  console.log(JSON.stringify({ done: "js-pubsub" }));
  process.exit(0);
}

main().catch((e) => {
  console.log("FAIL " + (e && e.stack ? e.stack : String(e)));
  process.exit(1);
});
