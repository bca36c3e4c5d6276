// HBONE CONNECT with Node's built-in http2 client and a client certificate.
// usage: node connect.js PORT AUTHORITY CERT KEY CA PAYLOAD
// Prints one JSON line: {"status": N, "data": "..."} or {"error": "..."}.
'use strict';
const http2 = require('http2');
const fs = require('fs');
const [port, authority, cert, key, ca, payload] = process.argv.slice(2);

let done = false;
function finish(obj) {
  if (done) return;
  done = true;
  process.stdout.write(JSON.stringify(obj) + '\n');
  client.close();
}

const client = http2.connect(`https://127.0.0.1:${port}`, {
  cert: fs.readFileSync(cert),
  key: fs.readFileSync(key),
  ca: fs.readFileSync(ca),
  minVersion: 'TLSv1.3',
  // HBONE has no SNI and server certificates carry only a SPIFFE URI SAN.
  servername: '',
  checkServerIdentity: () => undefined,
});
client.on('error', (e) => finish({ error: String(e) }));

const req = client.request({ ':method': 'CONNECT', ':authority': authority });
let status = 0;
let data = '';
req.setEncoding('utf8');
req.on('response', (headers) => {
  status = headers[':status'];
  if (status === 200) {
    req.write(payload);
    req.end(); // END_STREAM: half-close, the echo answers and then ends too
  }
});
req.on('data', (d) => { data += d; });
req.on('end', () => finish({ status, data }));
req.on('close', () => finish({ status, data }));
req.on('error', (e) => finish({ status, error: String(e) }));
setTimeout(() => finish({ status, data, error: 'timeout' }), 20000).unref();
