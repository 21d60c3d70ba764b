#!/usr/bin/env python3
"""The classic example's application: one Tornado process per port.

GET / answers "Hello from Process Id = <pid>". Run one per port:

    python3 examples/tornado/app.py --port=8071

It needs Tornado (Debian: apt-get install python3-tornado). For tests it also
offers /slow?ms=N (answers after N ms), /echo (POST: echoes the body and
counts it in /count, and with --journal=FILE appends it to FILE before
answering, so the record survives SIGKILL), and /count (how many POSTs each
body was seen).
"""
import asyncio
import os
import signal

import tornado.ioloop
import tornado.web
from tornado.options import define, options, parse_command_line

define("port", default=8071, type=int, help="port to listen on")
define("address", default="127.0.0.1", help="address to listen on")
define("journal", default="", help="file each POST /echo body is appended to (one line, written before the answer: it survives SIGKILL)")

PID = os.getpid()
SEEN = {}
JOURNAL = None  # fd of --journal, opened O_APPEND: one write(2) per POST


class MainHandler(tornado.web.RequestHandler):
    def get(self):
        self.write("Hello from Process Id = %d" % PID)

    def head(self):
        self.set_header("Content-Type", "text/plain")


class SlowHandler(tornado.web.RequestHandler):
    async def get(self):
        ms = int(self.get_argument("ms", "100"))
        await asyncio.sleep(ms / 1000.0)
        self.write("Hello from Process Id = %d" % PID)


class EchoHandler(tornado.web.RequestHandler):
    async def post(self):
        ms = int(self.get_argument("ms", "0"))
        body = self.request.body.decode("utf-8", "replace")
        SEEN[body] = SEEN.get(body, 0) + 1
        if JOURNAL is not None:
            os.write(JOURNAL, (body.replace("\n", " ") + "\n").encode("utf-8"))
        if ms:
            await asyncio.sleep(ms / 1000.0)
        self.write("pid=%d body=%s" % (PID, body))


class CountHandler(tornado.web.RequestHandler):
    def get(self):
        self.write({"pid": PID, "seen": SEEN})


def make_app():
    return tornado.web.Application([
        (r"/", MainHandler),
        (r"/slow", SlowHandler),
        (r"/echo", EchoHandler),
        (r"/count", CountHandler),
    ])


def main():
    global JOURNAL
    parse_command_line()
    if options.journal:
        JOURNAL = os.open(options.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    app = make_app()
    app.listen(options.port, address=options.address)
    loop = tornado.ioloop.IOLoop.current()
    # Exit cleanly on SIGTERM so the registrar's drain ends with status 0.
    signal.signal(signal.SIGTERM, lambda *_: loop.add_callback_from_signal(loop.stop))
    loop.start()


if __name__ == "__main__":
    main()
