// The unmodified Dapr JS SDK (@dapr/dapr) against Skiff's bindings, lock
// and configuration: client.binding.send (HTTP) on bindings.localstorage,
// server.binding.receive of a cron input binding (the SDK answers the
// OPTIONS probe), client.lock (HTTP), and client.configuration.get over
// gRPC (the SDK has no HTTP configuration client).
// Environment: DAPR_HTTP_PORT, DAPR_GRPC_PORT, APP_PORT.
"use strict";
const { CommunicationProtocolEnum, DaprClient, DaprServer, LogLevel } = require("@dapr/dapr");

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
  let ticks = 0;
  await server.binding.receive("jscron", async () => {
    ticks++;
  });
  await server.start();
  const client = new DaprClient(clientOptions);

  const created = await client.binding.send("files", "create", "from js", { fileName: "js.txt" });
  check("binding create answers the file name", created && created.fileName === "js.txt", created);
  const got = await client.binding.send("files", "get", undefined, { fileName: "js.txt" });
  check("binding get reads it back", String(got).includes("from js"), got);

  const l = await client.lock.lock("lockstore", "js-res", "js", 30);
  check("lock acquired", l.success === true, l);
  const l2 = await client.lock.lock("lockstore", "js-res", "other", 30);
  check("held lock refused", l2.success === false, l2);
  const u = await client.lock.unlock("lockstore", "js-res", "other");
  check("unlock by another owner refused", u.status === 2, u);
  const u2 = await client.lock.unlock("lockstore", "js-res", "js");
  check("unlock by the owner", u2.status === 0, u2);

  const grpc = new DaprClient({
    daprHost: "127.0.0.1",
    daprPort: process.env.DAPR_GRPC_PORT,
    communicationProtocol: CommunicationProtocolEnum.GRPC,
    logger: { level: LogLevel.Error },
  });
  const cfg = await grpc.configuration.get("cfg", ["greeting"]);
  check("configuration get over gRPC", cfg.items.greeting && cfg.items.greeting.value === "hi", cfg);

  for (let i = 0; i < 100 && ticks < 2; i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  check("the cron input binding reached the app", ticks >= 2, ticks);
  console.log(JSON.stringify({ done: "js-blocks" }));
  await server.stop();
  process.exit(0);
}

main().catch((e) => {
  console.log("FAIL " + (e && e.stack ? e.stack : String(e)));
  process.exit(1);
});
