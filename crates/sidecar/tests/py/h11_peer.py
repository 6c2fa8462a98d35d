"""Test peer built on h11, a strict HTTP/1.1 parser from PyPI, used as an independent oracle.
Needs Python 3.11+ and h11 (tested with 0.16.0). Only the standard library and h11 are used.
h11 accepts a few things that RFC 9112 forbids a sender to generate. Both modes reject them here
with an error that starts with "strict:": Content-Length together with Transfer-Encoding, a bare
LF in a message head, and obs-fold. h11 still accepts bare LF in chunked trailers, chunk
extensions, whitespace after the chunk size, and a repeated Content-Length with the same value.

Mode 1: `python h11_peer.py upstream`: an HTTP/1.1 origin server.
  Listens on 127.0.0.1 on a port the OS picks. The first stdout line is `LISTENING <port>`.
  Keep stdin open as a pipe: the process exits (os._exit(0)) when stdin reaches EOF.
  Each accepted connection gets an id 1, 2, 3, ... and is served by its own thread
  (keep-alive and pipelining work). For each complete request it prints one JSON line
  before it sends the response:
    {"conn": 1, "method": "GET", "target": "/x?y", "version": "1.1",
     "headers": [["host", "a"], ...], "body_b64": "...", "trailers": [["n", "v"], ...]}
  Header names are lowercased by h11. Names and values are decoded as latin-1.
  The request header `x-test-response` picks the response (the default is `cl`):
    cl       200, Content-Length, body "ok:<method>:<target>"
    chunked  200, chunked, body "hello" + " world" (two chunks), trailer "x-trailer: t"
    close    200, "Connection: close" and no framing header (framed by close), body
             "until-close". The connection is closed afterwards. These bytes are written by hand
             because h11 would use chunked encoding for an HTTP/1.1 peer.
    204/304  that status with no body
    hints    a 103 with "link: </a>" first, then the `cl` response
    big      200, Content-Length: 200000, body b"x" * 200000
    other    500, body "unknown x-test-response: <value>"
  HEAD gets the same headers with no body (a chunked response to HEAD has no trailers). Each
  final response has `x-upstream-conn: <id>`. A request with `Expect: 100-continue` gets a
  100 before its body is read.
  If h11 (or strict_check) rejects what the client sent, including EOF in the middle of a
  request, the server prints
    {"conn": 1, "error": "<h11 message>", "bytes_b64": "<every byte received on this conn>"}
  then tries to send a 400 and closes the connection.

Mode 2: `python h11_peer.py check-responses`: a strict client that checks a response stream.
  It reads JSON lines from stdin and writes one JSON line to stdout for each (flushed), until EOF.
    in:  {"methods": ["GET", "HEAD", ...], "data_b64": "<bytes a client received on ONE conn>"}
    out: {"responses": [{"status": 200, "informational": [103], "headers": [[n, v], ...],
                         "body_b64": "...", "trailers": [[n, v], ...]}, ...],
          "error": null | "response <i> to <METHOD>: <message>",
          "unused_bytes": <bytes after the end of the last complete response>}
  The requests go out one at a time, in order, as if they were pipelined. The data is given to
  h11 when it first needs bytes, and EOF follows when it needs more. If the connection must be
  closed after a response, the remaining methods get no answer and that is not an error.
  A stream that ends in the middle of a response is an error with "truncated" in the message.
"""
import base64
import http
import json
import os
import re
import socket
import sys
import threading
import time
import traceback

import h11

MAX_EVENT = 1 << 20
_out_lock = threading.Lock()


def emit(obj):
    line = json.dumps(obj) + "\n"
    with _out_lock:
        try:
            sys.stdout.write(line)
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):  # the test that reads us went away
            os._exit(0)


def hdrs(headers):
    return [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]


def b64(data):
    return base64.b64encode(bytes(data)).decode("ascii")


def strict_check(head, headers):
    """Raise for what RFC 9112 forbids a sender to generate but h11 accepts without complaint.
    `head` holds the raw bytes of the start line and header fields."""
    names = {n for n, _ in headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        raise h11.RemoteProtocolError("strict: both Content-Length and Transfer-Encoding")
    if re.search(rb"(?<!\r)\n", head):
        raise h11.RemoteProtocolError("strict: bare LF in the message head")
    if re.search(rb"\n[ \t]", head):
        raise h11.RemoteProtocolError("strict: obsolete line folding in the message head")


def resp(cls, code, headers):  # h11 would send an empty reason phrase
    return cls(status_code=code, headers=headers, reason=http.HTTPStatus(code).phrase)


# ---------------------------------------------------------------- mode 1: upstream


def linger_close(sock):
    """Send FIN, then drain briefly before closing. Closing a socket with unread input sends an
    RST, and the RST can destroy a response the peer has not read yet."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv(65536):
                break
    except OSError:
        pass
    finally:
        sock.close()


def respond(conn, sock, cid, req):
    """Send the response picked by x-test-response in one write (a 103 goes in its own write
    first). Returns False if the connection must close."""
    def send(*events):
        sock.sendall(b"".join(conn.send(e) or b"" for e in events))

    mode = "cl"
    for n, v in req.headers:
        if n == b"x-test-response":
            mode = v.decode("latin-1").strip().lower()
    head = req.method == b"HEAD"
    tag = [("x-upstream-conn", str(cid))]
    if mode == "hints":
        send(resp(h11.InformationalResponse, 103, [("link", "</a>")]))
        mode = "cl"
    if mode == "close":
        raw = b"HTTP/1.1 200 OK\r\nconnection: close\r\nx-upstream-conn: %d\r\n\r\n" % cid
        sock.sendall(raw + (b"" if head else b"until-close"))
        return False
    if mode == "chunked":  # h11 drops chunked for an HTTP/1.0 peer, which can't get trailers
        trailers = [("x-trailer", "t")] if req.http_version == b"1.1" and not head else []
        send(resp(h11.Response, 200, [("transfer-encoding", "chunked")] + tag),
             *([] if head else [h11.Data(data=b"hello"), h11.Data(data=b" world")]),
             h11.EndOfMessage(headers=trailers))
    elif mode in ("204", "304"):
        send(resp(h11.Response, int(mode), tag), h11.EndOfMessage())
    else:
        status, body = 200, b"ok:" + req.method + b":" + req.target
        if mode == "big":
            body = b"x" * 200000
        elif mode != "cl":
            status, body = 500, ("unknown x-test-response: " + mode).encode("latin-1", "replace")
        send(resp(h11.Response, status, [("content-length", str(len(body)))] + tag),
             *([] if head else [h11.Data(data=body)]), h11.EndOfMessage())
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
        conn.start_next_cycle()  # any pipelined bytes already received stay buffered
        return True
    return False  # MUST_CLOSE: the client asked to close, or it is HTTP/1.0


def serve(sock, cid):
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_EVENT)
    received = bytearray()
    req, body, start = None, bytearray(), 0  # start: offset in `received` of this request
    try:
        while True:
            try:
                ev = conn.next_event()
                if isinstance(ev, h11.Request):
                    end = len(received) - len(conn.trailing_data[0])
                    strict_check(received[start:end], ev.headers)
            except h11.RemoteProtocolError as e:
                emit({"conn": cid, "error": str(e), "bytes_b64": b64(received)})
                try:
                    sock.sendall(conn.send(resp(h11.Response, 400, [
                        ("content-length", "0"), ("connection", "close")])))
                    sock.sendall(conn.send(h11.EndOfMessage()))
                except Exception:
                    pass
                return
            if ev is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    sock.sendall(conn.send(resp(h11.InformationalResponse, 100, [])))
                try:
                    data = sock.recv(65536)
                except OSError:  # a reset counts as EOF; h11 decides whether it was too early
                    data = b""
                received += data
                conn.receive_data(data)
            elif isinstance(ev, h11.Request):
                req, body = ev, bytearray()
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                emit({"conn": cid, "method": req.method.decode("latin-1"),
                      "target": req.target.decode("latin-1"),
                      "version": req.http_version.decode("latin-1"),
                      "headers": hdrs(req.headers), "body_b64": b64(body),
                      "trailers": hdrs(ev.headers)})
                start = len(received) - len(conn.trailing_data[0])
                if not respond(conn, sock, cid, req):
                    return
            else:  # ConnectionClosed (or PAUSED, which cannot happen after start_next_cycle)
                return
    except OSError:
        pass  # the peer went away while we were sending
    except Exception:
        traceback.print_exc()  # a bug in this script, not an error in the peer
    finally:
        linger_close(sock)


def watch_stdin():
    while sys.stdin.buffer.read(65536):
        pass
    os._exit(0)


def upstream():
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    with _out_lock:
        print("LISTENING %d" % lsock.getsockname()[1], flush=True)
    threading.Thread(target=watch_stdin, daemon=True).start()
    cid = 0
    while True:
        sock, _ = lsock.accept()
        cid += 1
        threading.Thread(target=serve, args=(sock, cid), daemon=True).start()


# ---------------------------------------------------------------- mode 2: check-responses


def check(methods, data):
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_EVENT)
    responses, error = [], None
    fed = eof = False
    start = done = 0  # offsets in data: start of the current head, end of the last response
    for i, method in enumerate(methods, 1):
        if conn.our_state is not h11.IDLE:
            break  # the previous response closed the connection, so no more requests are sent
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        info, final, body = [], None, bytearray()
        try:
            while True:
                ev = conn.next_event()
                pos = len(data) - len(conn.trailing_data[0])  # all data is fed at once
                if ev is h11.NEED_DATA:
                    if not fed and data:
                        fed = True
                        conn.receive_data(data)
                    elif not eof:
                        fed = eof = True
                        conn.receive_data(b"")
                    else:  # h11 raises rather than asking again after EOF
                        raise h11.RemoteProtocolError("h11 wanted data after EOF")
                elif isinstance(ev, (h11.InformationalResponse, h11.Response)):
                    strict_check(data[start:pos], ev.headers)
                    start = pos
                    if isinstance(ev, h11.Response):
                        final = ev
                    else:
                        info.append(ev.status_code)
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    responses.append({"status": final.status_code, "informational": info,
                                      "headers": hdrs(final.headers), "body_b64": b64(body),
                                      "trailers": hdrs(ev.headers)})
                    start = done = pos
                    break
                else:  # ConnectionClosed or PAUSED, which h11 should not return here
                    raise h11.RemoteProtocolError("unexpected h11 event %r" % (ev,))
        except h11.RemoteProtocolError as e:
            if not eof or str(e).startswith("strict:"):
                error = "response %d to %s: %s"
            elif done == len(data):
                error = "response %d to %s: truncated: data ended before any response (%s)"
            else:
                error = "response %d to %s: truncated: data ended inside the response (%s)"
            error = error % (i, method, e)
            break
        # h11 keeps the connection reusable after a response framed by close (EOF was its end)
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE and not eof:
            conn.start_next_cycle()
        else:
            break  # MUST_CLOSE: the remaining requests can't be sent on this connection
    # bytes after the last complete response (after an error, this includes the bad response)
    return {"responses": responses, "error": error, "unused_bytes": len(data) - done}


def check_responses():
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            result = check(req["methods"], base64.b64decode(req["data_b64"]))
        except Exception as e:  # bad input line: answer it anyway so the caller does not hang
            result = {"responses": [], "error": "bad input: %r" % (e,), "unused_bytes": 0}
        emit(result)


if __name__ == "__main__":
    modes = {"upstream": upstream, "check-responses": check_responses}
    if len(sys.argv) != 2 or sys.argv[1] not in modes:
        sys.exit("usage: h11_peer.py upstream | check-responses")
    modes[sys.argv[1]]()
