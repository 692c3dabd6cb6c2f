/**
 * The device's MQTT link over mqtt.js (MQTT-over-WebSockets in a page; any URL mqtt.js takes in
 * Node), shaped like coordinator/wire/transport.py's MqttLink as the device loop uses it: QoS 1
 * everywhere, a clean session, a retained last will, keepalive 15 s, reconnection with resubscribe,
 * and received messages queued for `next(ms)` so the loop handles them one at a time, in order.
 * MQTT 3.1.1, which every broker edgezo uses speaks (the embedded amqtt broker speaks only that).
 */

const asBytes = (payload) => new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);

/**
 * Connect and return the link. `mqtt` is the mqtt.js module (passed in so the page and Node can
 * each give theirs); `onEvent({connected, error})` hears the connection's ups and downs.
 */
export function connectLink(mqtt, { url, clientId, username, password, will, onEvent = () => {} }) {
  const queue = [];
  let wake = null;
  const client = mqtt.connect(url, {
    clientId, username, password, clean: true, keepalive: 15, protocolVersion: 4, reconnectPeriod: 1000,
    connectTimeout: 10000, resubscribe: true, will: will && { topic: will.topic, payload: toWire(will.payload), qos: 1, retain: true },
  });
  const link = {
    client,
    connections: 0,
    get connected() { return client.connected; },
    /** Set when the broker refused this device's login (CONNACK 4 or 5): an Error that says so. */
    refused: null,
    subscribe: (topic) => client.subscribeAsync(topic, { qos: 1 }).catch((e) => { throw link.refused ?? e; }),
    publish: (topic, payload, { retain = false } = {}) =>
      client.publishAsync(topic, toWire(payload), { qos: 1, retain }).catch((e) => { throw link.refused ?? e; }),
    /** The next received message, or null after `ms` milliseconds. */
    next(ms) {
      if (queue.length) return Promise.resolve(queue.shift());
      return new Promise((resolve) => {
        const timer = setTimeout(() => { wake = null; resolve(null); }, ms);
        wake = () => { clearTimeout(timer); wake = null; resolve(queue.shift()); };
      });
    },
    /** Reconnect now (the tab came back, or the network did) instead of waiting for the backoff. */
    reconnect() {
      if (!client.connected && !client.disconnecting) client.reconnect();
    },
    close: () => client.endAsync(),
  };
  client.on("connect", () => { link.connections += 1; onEvent({ connected: true }); });
  client.on("message", (topic, payload) => {
    queue.push({ topic, payload: asBytes(payload) });
    if (wake) wake();
  });
  client.on("offline", () => onEvent({ connected: false }));
  client.on("close", () => onEvent({ connected: false }));
  client.on("error", (e) => {
    if (REFUSED_LOGIN.has(e.code) && !link.refused) link.refused = refusedLogin(url, username, e);
    onEvent({ error: (link.refused ?? e).message });
  });
  return link;
}

const REFUSED_LOGIN = new Set([4, 5, 134, 135]); // CONNACK: bad username or password, not authorized (3.1.1 and 5)

/** What a person should read when the broker turns this device's login down (mqtt.js says only
 * "Connection refused: Not authorized", and later "Connection closed" on every call). */
function refusedLogin(url, username, e) {
  const who = username ? `device ${username}'s credentials` : "this page: it has no token";
  return new Error(`the broker at ${url} refused ${who} (${e.message}); open the join link the coordinator printed `
    + "(it carries this device's token), or ask its operator for one");
}

/** mqtt.js wants a Buffer where there is one (Node), and takes a Uint8Array in a browser. */
function toWire(bytes) {
  return typeof Buffer === "function" ? Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) : bytes;
}

/** Wait until the link is connected, or fail with `why` after `ms`. */
export function waitConnected(link, ms, why) {
  if (link.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(why)), ms);
    link.client.once("connect", () => { clearTimeout(timer); resolve(); });
  });
}
