"""A Dubbo2 consumer over Hessian2 (PyPI dubbo-ssl-python==0.9.6) calling one address directly.

Usage: python consumer.py --address host:port --method M [--interface I] [--version V]
       [--group G] [--args JSON-array] [--count N] [--timeout-s T] [--interval-ms MS]
Prints one JSON line per call ({"ok": true, "result": ...} or {"ok": false, "error": ...});
exits 1 if any call failed.
"""
import argparse
import json
import sys
import time

from dubbo_ssl.client import DubboClient


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--interface", default="com.ringside.test.EchoService")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--group", default=None)
    p.add_argument("--args", default="[]")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout-s", type=float, default=3.0)
    p.add_argument("--interval-ms", type=float, default=0.0)
    a = p.parse_args()
    client = DubboClient(a.interface, a.group, version=a.version, host=a.address)
    args = json.loads(a.args)
    failed = 0
    for i in range(a.count):
        if i and a.interval_ms:
            time.sleep(a.interval_ms / 1000.0)
        try:
            result = client.call(a.method, args, timeout=a.timeout_s)
            print(json.dumps({"ok": True, "result": result}, default=str), flush=True)
        except Exception as e:  # the peer reports every failure as a line, then exits 1
            failed += 1
            print(json.dumps({"ok": False, "error": str(e)}), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
