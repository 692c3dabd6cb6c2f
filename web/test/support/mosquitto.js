/** A private mosquitto for the Node tests: one TCP and one WebSocket listener on 127.0.0.1. */
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

const accepts = (port) => new Promise((resolve) => {
  const socket = connect(port, "127.0.0.1", () => { socket.end(); resolve(true); });
  socket.on("error", () => resolve(false));
});

export function mosquittoPath() {
  for (const p of ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto", "/opt/homebrew/sbin/mosquitto"]) {
    if (existsSync(p)) return p;
  }
  throw new Error("mosquitto not found; install it: apt-get install -y mosquitto");
}

/** Start mosquitto (on the given ports, else free ones); returns {tcp, ws, stop()}. With `passwords`
 * ({user: password}) it admits only those accounts (a password file made with mosquitto_passwd). */
export async function startMosquitto({ tcp, ws, passwords } = {}) {
  tcp ??= await freePort();
  ws ??= await freePort();
  const dir = mkdtempSync(join(tmpdir(), "edgezo-web-mosquitto-"));
  const conf = join(dir, "mosquitto.conf");
  const access = passwords ? ["allow_anonymous false", `password_file ${passwordFile(dir, passwords)}`] : ["allow_anonymous true"];
  writeFileSync(conf, [`listener ${tcp} 127.0.0.1`, `listener ${ws} 127.0.0.1`, "protocol websockets", ...access,
    "max_queued_messages 100000", "persistence false", ""].join("\n"));
  const proc = spawn(mosquittoPath(), ["-c", conf], { stdio: "ignore" });
  for (let k = 0; k < 100 && !(await accepts(tcp) && await accepts(ws)); k++) await new Promise((r) => setTimeout(r, 50));
  return { tcp, ws, stop: () => new Promise((resolve) => { proc.once("exit", resolve); proc.kill("SIGTERM"); }) };
}

function passwordFile(dir, passwords) {
  const file = join(dir, "passwords");
  writeFileSync(file, "");
  for (const [user, password] of Object.entries(passwords)) {
    const made = spawnSync("mosquitto_passwd", ["-b", file, user, password]);
    if (made.status !== 0) throw new Error(`mosquitto_passwd failed: ${made.stderr}`);
  }
  chmodSync(dir, 0o755); // mosquitto started as root reads it as the user "mosquitto"
  chmodSync(file, 0o644);
  return file;
}
