/**
 * The MQTT link's login (src/link.js) against a real mosquitto that admits only its accounts: the
 * right token connects; a wrong or missing one is refused with a message that says so (mqtt.js
 * alone says "Connection closed" on the next call).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import mqtt from "mqtt";

import { connectLink, waitConnected } from "../src/link.js";
import { startMosquitto } from "./support/mosquitto.js";

let broker;
before(async () => { broker = await startMosquitto({ passwords: { web0: "tok-5f1c" } }); });
after(async () => { await broker.stop(); });

const link = (username, password) => connectLink(mqtt, { url: `ws://127.0.0.1:${broker.ws}`, clientId: `edgezo-${username}-t`, username, password });

test("the device's token logs it in", async () => {
  const l = link("web0", "tok-5f1c");
  try {
    await waitConnected(l, 5000, "not connected");
    await l.subscribe("edgezo/x/announce");
    assert.equal(l.refused, null);
  } finally {
    await l.close();
  }
});

for (const [what, user, password] of [["a wrong token", "web0", "wrong"], ["no token", undefined, undefined]]) {
  test(`${what} is refused with a message naming the problem`, async () => {
    const l = link(user, password);
    try {
      await assert.rejects(l.subscribe("edgezo/x/announce"), (e) => {
        assert.match(e.message, /the broker at ws:\/\/127\.0\.0\.1:\d+ refused /);
        assert.match(e.message, user ? /device web0's credentials/ : /it has no token/);
        assert.match(e.message, /join link/);
        return true;
      });
      assert.ok(l.refused);
    } finally {
      await l.close();
    }
  });
}
