// An independent APNs gateway for interoperability tests, on Node's own http2 and tls modules (no npm package).
//
//   node node_gateway.js '<options as JSON>'
//
// Prints one JSON line per fact on stdout: {"ev": "listening", "port": N} first, then "conn" (a TLS connection
// was accepted), "req" (a whole request or binary frame arrived), "ans" (the answer given to it) and "note"
// (a fault injected). Options:
//   mode        "http2" or "binary"; cert, key, ca: PEM paths (client certificates are required and verified,
//               unless clientCert is false)
//   rules       [[token hex prefix, status, reason, times]]: the first `times` requests for such a token (0 =
//               all of them) get this answer; everything else is accepted. Binary: status is the error code.
// HTTP/2 only (each fault acts on the gateway's first connection only, unless said otherwise):
//   settings    initial SETTINGS (maxConcurrentStreams, initialWindowSize, maxFrameSize), every connection
//   settingsAt  [n, settings]: new SETTINGS once n requests arrived
//   settingsIn  [ms, settings]: new SETTINGS ms after the connection opened (e.g. streams allowed at last)
//   informational  send a 103 (Early Hints) header block before every final answer
//   reverse     hold answers until this many are waiting (or 5 ms passed), then answer newest first
//   split       headers in one frame, the body in DATA frames of this many bytes, then an empty END_STREAM DATA
//   goawayAt    [n, keep, notice]: once n requests are held, GOAWAY(NO_ERROR) naming the keep-th; answer those up
//               to it, drop the rest unanswered and unprocessed, then close. With notice, a first GOAWAY naming
//               2^31-1 (shutdown notice) comes 20 ms before the real one
//   padding     pad every HEADERS and DATA frame as far as nghttp2 can (PADDING_STRATEGY_MAX)
//   trailers    end every answer with a trailing HEADERS frame
//   uniqueId    add apns-unique-id (a fresh UUID, reported with the answer) to every answer, as the sandbox does
//   filler      add a header of this many bytes to every answer (a header block continued in CONTINUATION frames)
//   early       [prefix, status, reason]: such a request is answered as soon as its headers arrive, before its
//               body, then reset with RST_STREAM(NO_ERROR) (RFC 9113 8.1: the client stops sending the body)
//   extensions  send ALTSVC and ORIGIN frames (extension frames a client must ignore) on every connection
//   goawayError [code, reason]: with goawayAt, the GOAWAY carries this error and {"reason"} as debug data, the
//               streams up to it stay unanswered, and the socket is closed 20 ms later
//   rst         [[prefix, code]]: the first request for such a token is reset with RST_STREAM(code), unprocessed
//   silence     token prefix: the first request for such a token is never answered (the connection stays up and
//               answers the rest; its close is reported as "closed" with the client's reset code)
//   ping        send a PING after every n-th request (every connection); each acknowledgement is reported as "pong"
//   closeAt     n: close the socket right after the n-th answer
//   maxRequests n: on every connection, a graceful close (GOAWAY naming the last stream processed) after n
//               requests, as a server with a per-connection request cap does (nginx's keepalive_requests)
// Binary only:
//   onError     "fin": the error response, TLS close_notify and FIN in one event-loop turn (three syscalls; Node
//               has no TCP_CORK, so one or two segments); "delay": the error response, then close
//               after `delayMs`; "fin-only": the error response, then a TCP FIN without TLS close_notify;
//               "silent": close without any error response; "reset": the error response, then
//               a TCP reset (no close_notify, no FIN) `delayMs` later; "split": the error response in two writes
//               `delayMs` apart, then close
//   pauseAt     [n, ms]: after the n-th frame of the first connection, stop reading for ms (a slow gateway)
//   lateAt      [n, delayMs]: after the n-th frame and `delayMs` of quiet, an error (status 8) naming the first
//               frame of the connection, then close
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const http2 = require("http2");
const tls = require("tls");

const opts = JSON.parse(process.argv[2]);
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const seen = new Map(); // token -> requests seen so far (for rules' `times`)
let connections = 0;

function ruleFor(token) {
  const n = (seen.get(token) || 0) + 1;
  seen.set(token, n);
  for (const [prefix, status, reason, times] of opts.rules || []) {
    if (token.startsWith(prefix) && (times === 0 || n <= times)) return [status, reason];
  }
  return null;
}

const tlsOptions = {
  key: fs.readFileSync(opts.key),
  cert: fs.readFileSync(opts.cert),
  ca: fs.readFileSync(opts.ca),
  requestCert: opts.clientCert !== false, // false: token auth, no client certificate asked for
  rejectUnauthorized: opts.clientCert !== false,
};

function serveHttp2() {
  const padding = opts.padding ? http2.constants.PADDING_STRATEGY_MAX : http2.constants.PADDING_STRATEGY_NONE;
  const server = http2.createSecureServer({ ...tlsOptions, settings: opts.settings || {}, paddingStrategy: padding });
  const sockets = new Map(); // client port -> TLS socket
  server.on("secureConnection", (socket) => {
    sockets.set(socket.remotePort, socket);
    socket.on("close", () => sockets.delete(socket.remotePort));
  });
  server.on("session", (session) => {
    const conn = connections++;
    const first = conn === 0;
    emit({ ev: "conn", conn });
    let arrived = 0;
    let answered = 0;
    let held = [];
    let timer = null;
    let goingAway = false;
    let lastKept = Infinity; // after our GOAWAY: streams above the id it names are never processed
    let closing = false; // closeAt reached: nothing more is answered on this connection
    let open = 0; // streams open now, reported with each request: the client must stay within our limit
    session.on("error", () => {});
    if (first && opts.settingsIn) {
      setTimeout(() => {
        emit({ ev: "note", what: "settings", conn });
        session.settings(opts.settingsIn[1]);
      }, opts.settingsIn[0]);
    }
    if (opts.extensions) {
      session.altsvc('h2=":443"; ma=60', "https://127.0.0.1");
      session.origin("https://127.0.0.1");
    }

    function answer(stream, token) {
      if (stream.destroyed || stream.closed || session.destroyed || closing) return; // after close(): still answer
      const rule = ruleFor(token);
      const status = rule ? rule[0] : 200;
      answered++;
      const headers = { ":status": status, "apns-id": stream.apnsId };
      const unique = opts.uniqueId ? crypto.randomUUID() : undefined;
      if (unique) headers["apns-unique-id"] = unique; // what the development environment adds to every answer
      emit({ ev: "ans", conn, sid: stream.id, token, status, apnsId: stream.apnsId, unique });
      if (opts.filler) headers["x-filler"] = "f".repeat(opts.filler);
      if (opts.informational) stream.additionalHeaders({ ":status": 103, link: "</x>; rel=preload" });
      if (opts.trailers) {
        stream.on("wantTrailers", () => stream.sendTrailers({ "x-trailer": "end" }));
        stream.respond(headers, { waitForTrailers: true });
        if (status === 200) stream.end();
        else stream.end(JSON.stringify({ reason: rule[1], timestamp: Date.now() }));
      } else if (status === 200) {
        if (opts.split) {
          stream.respond(headers); // HEADERS alone, then an empty DATA frame carries END_STREAM
          stream.end();
        } else {
          stream.respond(headers, { endStream: true });
        }
      } else {
        const body = { reason: rule[1] };
        if (status === 410) body.timestamp = Date.now() - 86400000;
        const bytes = Buffer.from(JSON.stringify(body));
        headers["content-type"] = "application/json";
        stream.respond(headers);
        if (opts.split) {
          for (let i = 0; i < bytes.length; i += opts.split) stream.write(bytes.subarray(i, i + opts.split));
          stream.end();
        } else {
          stream.end(bytes);
        }
      }
      if (first && opts.closeAt && answered === opts.closeAt) {
        closing = true;
        emit({ ev: "note", what: "close", conn });
        // the TLS socket itself (a session only lends a guarded proxy of it): close_notify and FIN, no GOAWAY; a
        // moment later, for nghttp2 has written the answers of the streams already closed only by then
        stream.on("close", () => setTimeout(() => sockets.get(session.socket.remotePort).end(), 20));
      }
    }

    function flush() {
      timer = null;
      const now = held.reverse();
      held = [];
      for (const [stream, token] of now) answer(stream, token);
    }

    function goaway() {
      const [, keep, notice] = opts.goawayAt;
      if (notice === true) {
        emit({ ev: "note", what: "notice", conn });
        session.goaway(http2.constants.NGHTTP2_NO_ERROR, 2 ** 31 - 1);
        setTimeout(() => goaway2(keep), 20);
      } else {
        goaway2(keep);
      }
    }

    function goaway2(keep) {
      const kept = held.slice(0, keep);
      const dropped = held.slice(keep);
      held = [];
      const last = kept.length ? kept[kept.length - 1][0].id : 0;
      lastKept = last;
      emit({ ev: "note", what: "goaway", conn, last, dropped: dropped.map(([s, t]) => t) });
      // goawayError [code, reason]: GOAWAY with that error and Apple's JSON reason as debug data, the kept streams
      // left unanswered (processed or not: the client cannot know)
      if (opts.goawayError) {
        const [code, reason] = opts.goawayError;
        session.goaway(code, last, Buffer.from(JSON.stringify({ reason })));
        // after a GOAWAY for an error the TCP connection MUST be closed (RFC 9113 5.4.1)
        setTimeout(() => sockets.get(session.socket.remotePort).end(), 20);
        return;
      } else {
        session.goaway(http2.constants.NGHTTP2_NO_ERROR, last);
        for (const [stream, token] of kept) answer(stream, token);
      }
      setTimeout(() => session.close(), 50);
    }

    session.on("stream", (stream, headers) => {
      const token = String(headers[":path"] || "").split("/").pop();
      open++;
      stream.on("close", () => open--);
      stream.apnsId = headers["apns-id"] || "00000000-0000-0000-0000-000000000000";
      if (opts.early && token.startsWith(opts.early[0])) {
        const [, status, reason] = opts.early;
        arrived++;
        emit({ ev: "req", conn, sid: stream.id, token, len: -1, open });
        emit({ ev: "ans", conn, sid: stream.id, token, status });
        stream.on("error", () => {});
        stream.respond({ ":status": status, "apns-id": stream.apnsId });
        stream.end(JSON.stringify({ reason }), () => stream.close(http2.constants.NGHTTP2_NO_ERROR));
        return;
      }
      const chunks = [];
      stream.on("data", (c) => chunks.push(c));
      stream.on("error", () => {});
      stream.on("end", () => {
        if (stream.id > lastKept) {
          emit({ ev: "note", what: "ignored", conn, sid: stream.id, token }); // beyond our GOAWAY: not processed
          return;
        }
        arrived++;
        const auth = String(headers.authorization || "").split(" ")[0]; // "bearer" under token auth
        emit({ ev: "req", conn, sid: stream.id, token, len: Buffer.concat(chunks).length, open, auth });
        if (opts.ping && arrived % opts.ping === 0) session.ping((err) => err || emit({ ev: "pong", conn }));
        if (first && opts.settingsAt && arrived === opts.settingsAt[0]) {
          emit({ ev: "note", what: "settings", conn });
          session.settings(opts.settingsAt[1]);
        }
        if (opts.silence && token.startsWith(opts.silence) && !seen.has("silence:" + token)) {
          seen.set("silence:" + token, 1); // only the first time: the request sent again is answered
          emit({ ev: "note", what: "silence", conn, sid: stream.id, token });
          stream.on("close", () => emit({ ev: "note", what: "closed", conn, sid: stream.id, code: stream.rstCode }));
          return;
        }
        const rst = (opts.rst || []).find(([prefix]) => token.startsWith(prefix));
        if (rst && !seen.has("rst:" + token)) {
          seen.set("rst:" + token, 1);
          emit({ ev: "note", what: "rst", conn, sid: stream.id, token, code: rst[1] });
          stream.close(rst[1]);
          return;
        }
        if (first && opts.goawayAt && lastKept === Infinity) {
          held.push([stream, token]); // also while a shutdown notice is out: the real GOAWAY decides their fate
          if (!goingAway && held.length >= opts.goawayAt[0]) {
            goingAway = true;
            goaway();
          }
          return;
        }
        if (opts.reverse) {
          held.push([stream, token]);
          if (held.length >= opts.reverse) flush();
          else if (!timer) timer = setTimeout(flush, 5);
          return;
        }
        answer(stream, token);
        if (opts.maxRequests && arrived === opts.maxRequests) {
          emit({ ev: "note", what: "max_requests", conn });
          session.close();
        }
      });
    });
  });
  return server;
}

function errorPacket(status, id) {
  const b = Buffer.alloc(6);
  b[0] = 8;
  b[1] = status;
  b.writeUInt32BE(id, 2);
  return b;
}

// One command-2 frame from the start of buf: {token, id, size} or null when incomplete; throws when malformed.
function parseFrame(buf) {
  if (buf.length < 5) return null;
  if (buf[0] !== 2) throw new Error("command " + buf[0]);
  const size = 5 + buf.readUInt32BE(1);
  if (buf.length < size) return null;
  let pos = 5;
  let token = "";
  let id = 0;
  while (pos < size) {
    const item = buf[pos];
    const len = buf.readUInt16BE(pos + 1);
    const data = buf.subarray(pos + 3, pos + 3 + len);
    if (item === 1) token = data.toString("hex");
    if (item === 3) id = data.readUInt32BE(0);
    pos += 3 + len;
  }
  return { token, id, size };
}

function serveBinary() {
  // TLS 1.2 at most, as the legacy gateway: session tickets travel inside the handshake. The TCP sockets are
  // kept by client port, so that a case can reset a TCP connection under its TLS session.
  const raws = new Map();
  const server = tls.createServer({ ...tlsOptions, maxVersion: "TLSv1.2" }, (socket) =>
    serveBinaryConnection(socket, raws.get(socket.remotePort)),
  );
  server.on("connection", (raw) => {
    const port = raw.remotePort;
    raws.set(port, raw);
    raw.on("close", () => raws.delete(port));
  });
  return server;
}

function serveBinaryConnection(socket, raw) {
  {
    const conn = connections++;
    emit({ ev: "conn", conn });
    let buf = Buffer.alloc(0);
    let done = false;
    let frames = 0;
    let firstId = null;
    let lateTimer = null;
    socket.on("error", () => {});
    let paused = false;
    socket.on("data", (chunk) => {
      if (done) return; // after an error Apple discards everything that follows
      buf = Buffer.concat([buf, chunk]);
      consume();
    });
    function consume() {
      while (!done && !paused) {
        let frame;
        try {
          frame = parseFrame(buf);
        } catch (e) {
          done = true;
          socket.destroy();
          return;
        }
        if (!frame) return;
        buf = buf.subarray(frame.size);
        frames++;
        if (firstId === null) firstId = frame.id;
        emit({ ev: "req", conn, token: frame.token, id: frame.id });
        const rule = ruleFor(frame.token);
        if (rule) {
          done = true;
          // Shutdown (10) names the last frame processed: that one was accepted, everything after it discarded
          emit({ ev: "ans", conn, token: frame.token, id: frame.id, status: rule[0] === 10 ? 0 : rule[0] });
          const packet = errorPacket(rule[0], frame.id);
          if (opts.onError === "silent") {
            socket.end();
          } else if (opts.onError === "fin-only") {
            socket.write(packet, () => raw.end()); // FIN without a TLS close_notify
          } else if (opts.onError === "reset") {
            socket.write(packet, () => setTimeout(() => raw.resetAndDestroy(), opts.delayMs || 0));
          } else if (opts.onError === "split") {
            socket.write(packet.subarray(0, 3));
            setTimeout(() => socket.end(packet.subarray(3)), opts.delayMs || 50);
          } else if (opts.onError === "delay") {
            socket.write(packet);
            setTimeout(() => socket.end(), opts.delayMs || 50);
          } else {
            socket.end(packet);
          }
          return;
        }
        emit({ ev: "ans", conn, token: frame.token, id: frame.id, status: 0 });
        if (opts.pauseAt && conn === 0 && frames === opts.pauseAt[0]) {
          emit({ ev: "note", what: "pause", conn });
          paused = true;
          socket.pause();
          setTimeout(() => {
            paused = false;
            socket.resume();
            consume();
          }, opts.pauseAt[1]);
        }
        if (opts.lateAt && conn === 0 && frames === opts.lateAt[0]) {
          const named = firstId;
          lateTimer = setTimeout(() => {
            done = true;
            emit({ ev: "note", what: "late", conn, id: named });
            socket.end(errorPacket(8, named));
          }, opts.lateAt[1]);
        }
      }
    }
    socket.on("close", () => lateTimer && clearTimeout(lateTimer));
  }
}

const server = opts.mode === "binary" ? serveBinary() : serveHttp2();
server.on("tlsClientError", () => {});
server.listen(0, "127.0.0.1", () => emit({ ev: "listening", port: server.address().port }));
process.on("SIGTERM", () => process.exit(0));
