// node_ws_echo.js: the Node.js `ws` peer for the WebSocket echo benchmark:
// every text or binary message is sent back as it came.
//
// Usage: node bench/node_ws_echo.js HOST PORT
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
const [host, portText] = process.argv.slice(2);
const port = Number(portText);
if (!host || !Number.isInteger(port) || port <= 0 || port > 65535) {
  process.stderr.write('usage: node node_ws_echo.js HOST PORT\n');
  process.exit(2);
}

const wss = new WebSocket.Server({
  host,
  port,
  backlog: 4096,
  perMessageDeflate: false,
  maxPayload: 1 << 20,
  clientTracking: false,
});

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => ws.terminate());
});
wss.on('error', (err) => {
  process.stderr.write(`node_ws_echo: ${err.message}\n`);
  process.exit(1);
});
