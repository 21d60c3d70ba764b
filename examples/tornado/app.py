#!/usr/bin/env python3
"""The classic example's application: one Tornado process per port.

GET / answers "Hello from Process Id = <pid>". Run one per port:

    python3 examples/tornado/app.py --port=8071

It needs Tornado (Debian: apt-get install python3-tornado). For tests it also
offers /slow?ms=N (answers after N ms), /echo (POST: echoes the body and
counts it in /count), and /count (how many POSTs each body was seen).
With --journal=FILE every POST body is also appended to FILE, one line each,
and fsynced before the handler goes on: the record survives SIGKILL, so a
test can tell whether a killed instance ran a POST that was then sent
elsewhere.

GET /cached answers "Hello from Process Id = <pid>" with
"Cache-Control: public, max-age=N" (N from ?max_age=, default 10): behind the
agent with --cache, the same request gets the same response (the same PID)
and this process sees one request per N seconds.

/respond is for the cache's tests: it answers with the status (?status=),
header fields (?h=Name:value, repeatable), body (?body=, or ?size=N bytes)
and delay (?ms=) it is asked for (from the request numbered ?fail_after=
on: a bare 500), answers 304 when If-None-Match matches the
?h=ETag it is told to send, names the request's ?echo= header field in the
body, and counts the requests per ?key= (GET /hits?key=K reads the count).
"""
import asyncio
import os
import time
import signal

import tornado.httputil
import tornado.ioloop
import tornado.web
from tornado.options import define, options, parse_command_line

define("port", default=8071, type=int, help="port to listen on")
define("address", default="127.0.0.1", help="address to listen on")
define("journal", default="", help="append every POST body to this file, fsynced before answering")

PID = os.getpid()
SEEN = {}
HITS = {}
JOURNAL = None  # file descriptor of --journal, opened in main


def record(body):
    """Counts body and, with --journal, appends it durably before returning."""
    SEEN[body] = SEEN.get(body, 0) + 1
    if JOURNAL is not None:
        os.write(JOURNAL, (body.replace("\n", " ") + "\n").encode("utf-8"))
        os.fsync(JOURNAL)


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
        record(body)
        if ms:
            await asyncio.sleep(ms / 1000.0)
        self.write("pid=%d body=%s" % (PID, body))


class CountHandler(tornado.web.RequestHandler):
    def get(self):
        self.write({"pid": PID, "seen": SEEN})


class CachedHandler(tornado.web.RequestHandler):
    def get(self):
        max_age = int(self.get_argument("max_age", "10"))
        HITS["/cached"] = HITS.get("/cached", 0) + 1
        self.set_header("Cache-Control", "public, max-age=%d" % max_age)
        self.write("Hello from Process Id = %d" % PID)


class RespondHandler(tornado.web.RequestHandler):
    async def handle(self):
        key = self.get_argument("key", "")
        HITS[key] = HITS.get(key, 0) + 1
        ms = int(self.get_argument("ms", "0"))
        if ms:
            await asyncio.sleep(ms / 1000.0)
        fail_after = int(self.get_argument("fail_after", "0"))
        if fail_after and HITS[key] > fail_after:
            self.set_status(500)
            self.finish("failing")
            return
        etag = None
        for h in self.get_arguments("h"):
            name, _, value = h.partition(":")
            value = value.strip().replace("{now}", tornado.httputil.format_timestamp(time.time()))
            self.add_header(name.strip(), value)
            if name.strip().lower() == "etag":
                etag = value
        inm = self.request.headers.get("If-None-Match")
        if etag is not None and inm is not None and etag in [t.strip() for t in inm.split(",")]:
            self.set_status(304)
            self.finish()
            return
        self.set_status(int(self.get_argument("status", "200")))
        size = int(self.get_argument("size", "0"))
        body = self.get_argument("body", "pid=%d n=%d" % (PID, HITS[key]))
        echo = self.get_argument("echo", "")
        if echo:
            body += " %s=%s" % (echo, self.request.headers.get(echo, ""))
        if size:
            body = ("x" * size)
        if self.request.method != "HEAD" and self.get_status() not in (204, 304):
            self.write(body)

    def compute_etag(self):
        return None  # only the ETag the test asks for

    async def get(self):
        await self.handle()

    async def head(self):
        await self.handle()

    async def post(self):
        await self.handle()

    async def put(self):
        await self.handle()

    async def delete(self):
        await self.handle()


class HitsHandler(tornado.web.RequestHandler):
    def get(self):
        self.set_header("Cache-Control", "no-store")
        self.write({"pid": PID, "hits": HITS.get(self.get_argument("key", ""), 0)})


def make_app():
    return tornado.web.Application([
        (r"/", MainHandler),
        (r"/slow", SlowHandler),
        (r"/echo", EchoHandler),
        (r"/count", CountHandler),
        (r"/cached", CachedHandler),
        (r"/respond", RespondHandler),
        (r"/hits", HitsHandler),
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
