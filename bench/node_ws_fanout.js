// node_ws_fanout.js: the Node.js `ws` peer for the WebSocket broadcast
// fan-out benchmark: every message is sent to every connected client, the
// sender included (what bench/ws_fanout.lua does through moonwire's pub/sub).
// One process, one thread: Node has no broadcast across processes.
// A client whose send buffer is over 256 KiB misses the message, as with
// moonwire's default slow_subscriber = "drop": nothing buffers without bound.
//
// Usage: node bench/node_ws_fanout.js HOST PORT
'use strict';

function loadWs() {
  try {
    return require('ws');
  } catch (e) {
    // Debian's node-ws lives outside the default module path of some Node builds.
    return require('/usr/share/nodejs/ws');
  }
}

const WebSocket = loadWs();
const HIGH_WATER = 256 * 1024;
const [host, portText] = process.argv.slice(2);
const port = Number(portText);
if (!host || !Number.isInteger(port) || port <= 0 || port > 65535) {
  process.stderr.write('usage: node node_ws_fanout.js HOST PORT\n');
  process.exit(2);
}

const wss = new WebSocket.Server({
  host,
  port,
  backlog: 4096,
  perMessageDeflate: false,
  maxPayload: 1 << 20,
  clientTracking: true,
});

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN && client.bufferedAmount <= HIGH_WATER) {
        client.send(data, { binary: isBinary });
      }
    }
  });
  ws.on('error', () => ws.terminate());
});
wss.on('error', (err) => {
  process.stderr.write(`node_ws_fanout: ${err.message}\n`);
  process.exit(1);
});
