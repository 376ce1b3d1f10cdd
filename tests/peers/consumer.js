// A Dubbo2 consumer (npm sofa-rpc-node + dubbo-remoting) calling one address directly.
// Usage: node consumer.js (--address host:port | --registry 127.0.0.1:ZKPORT/dubbo) --method M [--interface I] [--version V]
//        [--group G] [--args JSON-array | --args-file FILE] [--count N] [--timeout-ms T]
//        [--interval-ms MS] [--attachments JSON-object]
// --attachments: Dubbo attachments sent with every call (sofa-rpc-node's requestProps), e.g.
// {"dubbo.tag":"gray"}.
// Prints one JSON line per call: {"ok":true,"result":...} or {"ok":false,"error":"..."};
// exits 1 if any call failed.
'use strict';
const { RpcClient } = require('sofa-rpc-node').client;
const protocol = require('dubbo-remoting');

function arg(name, dflt) {
  const i = process.argv.indexOf('--' + name);
  return i > 0 ? process.argv[i + 1] : dflt;
}

async function main() {
  const logger = { info() {}, warn() {}, debug() {}, error() {} };
  const registryAddress = arg('registry', undefined);
  let registry;
  if (registryAddress) {
    const { ZookeeperRegistry } = require('sofa-rpc-node').registry;
    registry = new ZookeeperRegistry({ logger, address: registryAddress });
  }
  const client = new RpcClient({ logger, protocol, registry });
  const opts = {
    interfaceName: arg('interface', 'com.ringside.test.EchoService'),
    version: arg('version', '1.0.0'),
  };
  // With a registry the consumer calls the providers it finds there.
  if (!registry) opts.serverHost = arg('address', '127.0.0.1:20880');
  const group = arg('group', undefined);
  if (group) opts.group = group;
  const consumer = client.createConsumer(opts);
  await consumer.ready();
  const method = arg('method', 'echo');
  const file = arg('args-file', undefined);
  const args = JSON.parse(file ? require('fs').readFileSync(file, 'utf8') : arg('args', '[]'));
  const count = Number(arg('count', '1'));
  const timeout = Number(arg('timeout-ms', '3000'));
  const interval = Number(arg('interval-ms', '0'));
  const attachments = arg('attachments', undefined);
  const requestProps = attachments ? JSON.parse(attachments) : undefined;
  let failed = 0;
  for (let i = 0; i < count; i++) {
    try {
      const result = await consumer.invoke(method, args, { responseTimeout: timeout, requestProps });
      const shown = typeof result === 'string' && result.length > 256 ? { length: result.length } : result;
      console.log(JSON.stringify({ ok: true, result: shown }));
    } catch (err) {
      failed++;
      console.log(JSON.stringify({ ok: false, error: String(err && err.message || err) }));
    }
    if (interval) await new Promise(r => setTimeout(r, interval));
  }
  client.close && client.close();
  process.exit(failed ? 1 : 0);
}
main().catch(err => { console.log(JSON.stringify({ ok: false, error: String(err) })); process.exit(1); });
