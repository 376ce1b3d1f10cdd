// A tiny ZooKeeper client for ringside's tests (npm node-zookeeper-client, a dependency of
// sofa-rpc-node's registry).
// Usage: node zk.js --server 127.0.0.1:PORT ls PATH   -> prints a JSON array of the children,
//                                                       URL-decoded ([] if PATH does not exist)
//        node zk.js --server 127.0.0.1:PORT rm PATH   -> deletes PATH (a node, URL-encoded name)
// Exits 1 on any other error.
'use strict';
const zookeeper = require('node-zookeeper-client');

function arg(name, dflt) {
  const i = process.argv.indexOf('--' + name);
  return i > 0 ? process.argv[i + 1] : dflt;
}

const rest = process.argv.slice(2).filter((a, i, all) => a !== '--server' && all[i - 1] !== '--server');
const [op, path] = rest;
const client = zookeeper.createClient(arg('server', '127.0.0.1:2181'), { sessionTimeout: 5000 });
const fail = err => { console.error(String(err)); process.exit(1); };
setTimeout(() => fail('timeout'), 10000).unref();
client.once('connected', () => {
  if (op === 'ls') {
    client.getChildren(path, (err, children) => {
      if (err && err.getCode && err.getCode() === zookeeper.Exception.NO_NODE) children = [];
      else if (err) return fail(err);
      console.log(JSON.stringify(children.map(c => decodeURIComponent(c))));
      client.close();
      process.exit(0);
    });
  } else if (op === 'rm') {
    client.remove(path, -1, err => {
      if (err) return fail(err);
      client.close();
      process.exit(0);
    });
  } else {
    fail('usage: zk.js --server HOST:PORT (ls|rm) PATH');
  }
});
client.connect();
