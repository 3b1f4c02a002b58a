// @parse/node-apn (HTTP/2), one provider, sending `count` notifications from memory to 127.0.0.1:port.
// Keeps connections x 1,000 requests outstanding (more would sit in node's queue and hit node-apn's
// 5 s request timeout). Prints one JSON line: rate from the first request to the last answer.
// usage: node node_apn_http2.js PORT COUNT CONNECTIONS CA P8_KEY KEY_ID TEAM_ID TOPIC PAYLOAD_JSON
'use strict';
const apn = require('@parse/node-apn');

const [port, count, connections, ca, key, keyId, teamId, topic, payload] = process.argv.slice(2);
const total = parseInt(count, 10);
const conns = parseInt(connections, 10);
const options = {
  token: { key, keyId, teamId },
  ca,
  address: '127.0.0.1',
  port: parseInt(port, 10),
  production: false,
  requestTimeout: 60000,
};
const provider = conns > 1 ? new apn.MultiProvider({ ...options, clientCount: conns }) : new apn.Provider(options);
const note = new apn.Notification();
note.rawPayload = JSON.parse(payload);
note.topic = topic;
note.pushType = 'alert';
note.priority = 10;

function token(i) {
  return (BigInt(i) * 0x9E3779B97F4A7C15n + 0x5EEDn).toString(16).padStart(64, '0').slice(-64);
}

async function main() {
  let next = 0;
  let ok = 0;
  let failed = 0;
  const t0 = process.hrtime.bigint();
  async function lane() {
    while (next < total) {
      const i = next++;
      const res = await provider.send(note, token(i));
      ok += res.sent.length;
      failed += res.failed.length;
    }
  }
  await Promise.all(Array.from({ length: conns * 1000 }, lane));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(JSON.stringify({ sent: ok, failed, seconds, rate: total / seconds }));
  provider.shutdown();
  setTimeout(() => process.exit(0), 100);
}
main().catch(err => { console.error(err); process.exit(1); });
