#!/usr/bin/env python3
"""An echo bot for Sealpost: answers every message it receives with the same text.

It talks to `sealpost daemon` over its Unix socket (JSON-RPC 2.0, one object per line; see
docs/jsonrpc.md), with nothing but Python's standard library. The daemon holds the keys; the bot
sees what the user sees.

    SEALPOST_HOME=/tmp/bot sealpost daemon &
    SEALPOST_HOME=/tmp/bot python3 examples/echo-bot.py

It marks each message seen (as the consumer "echo-bot") once it has answered, so a bot that is
stopped and started again answers every message once: none twice, none missed.
"""

import json
import os
import socket
import sys


class Daemon:
    """One connection to the daemon: calls, and the notifications that arrive meanwhile."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.lines = self.sock.makefile("r", encoding="utf-8")
        self.next_id = 1
        self.notifications = []

    def call(self, method, **params):
        request = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        self.next_id += 1
        self.sock.sendall((json.dumps(request) + "\n").encode("utf-8"))
        while True:
            message = self.read()
            if message.get("id") != request["id"]:
                self.notifications.append(message)
                continue
            if "error" in message:
                raise RuntimeError(f"{method}: {message['error']['message']}")
            return message["result"]

    def notification(self):
        if self.notifications:
            return self.notifications.pop(0)
        return self.read()

    def read(self):
        line = self.lines.readline()
        if not line:
            sys.exit("the daemon stopped")
        return json.loads(line)


def socket_path():
    if len(sys.argv) > 1:
        return sys.argv[1]
    home = os.environ.get("SEALPOST_HOME") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"),
        "sealpost",
        "client",
    )
    with open(os.path.join(home, "daemon.json"), encoding="utf-8") as f:
        return json.load(f)["socket"]


def main():
    daemon = Daemon(socket_path())
    me = daemon.call("whoami")["username"]
    daemon.call("subscribe", consumer="echo-bot")
    print(f"echo bot running as {me}", flush=True)
    while True:
        note = daemon.notification()
        if note.get("method") != "event":
            continue
        event = note["params"]["event"]
        if event["event"] == "message" and event["from"] != me:
            # Answer in the conversation it came from, named by its id (names can clash).
            daemon.call("send", to=event["conversation_id"], text=event["text"])
        daemon.call("events.seen", consumer="echo-bot", ids=[event["event_id"]])


if __name__ == "__main__":
    main()
