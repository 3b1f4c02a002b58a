// node `apn` 1.7 (legacy binary protocol), one connection, sending `count` notifications from memory to
// 127.0.0.1:port. Prints one JSON line: rate from the first push to the last notification written to the socket.
// usage: node node_apn_binary.js PORT COUNT CA CLIENT_PEM PAYLOAD_JSON
'use strict';
const apn = require('apn');

const [port, count, ca, pem, payload] = process.argv.slice(2);
const total = parseInt(count, 10);
const conn = new apn.Connection({
  cert: pem,
  key: pem,
  ca,
  gateway: '127.0.0.1',
  port: parseInt(port, 10),
  maxConnections: 1,
  fastMode: true,
});
const body = JSON.parse(payload);

function token(i) {
  return (BigInt(i) * 0x9E3779B97F4A7C15n + 0x5EEDn).toString(16).padStart(64, '0').slice(-64);
}

let transmitted = 0;
let errors = 0;
let t0;
conn.on('transmissionError', () => { errors++; });
conn.on('error', err => { console.error(String(err)); process.exit(1); });
conn.on('transmitted', () => {
  transmitted++;
  if (transmitted === total) {
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    console.log(JSON.stringify({ sent: transmitted, errors, seconds, rate: total / seconds }));
    conn.shutdown();
    setTimeout(() => process.exit(0), 200);
  }
});
// Push in chunks of CHUNK as the buffer empties ('completed'), as an application feeding it from a queue
// would: one array of every notification makes node `apn` 1.7 shift() a huge array once per frame.
const CHUNK = 100;
let pushed = 0;
function pushChunk() {
  const end = Math.min(total, pushed + CHUNK);
  for (; pushed < end; pushed++) {
    const note = new apn.Notification(body);
    note.expiry = 0;
    note.priority = 10;
    conn.pushNotification(note, token(pushed));
  }
}
// (on the next turn: node `apn` clears its 'queued' flag right after emitting 'completed')
conn.on('completed', () => { if (pushed < total) setImmediate(pushChunk); });
t0 = process.hrtime.bigint();
pushChunk();
