"""Real gRPC peer (grpcio, raw bytes: no protobuf, no codegen) for the sidecar's
h2c integration test: the test starts a server, puts the proxy in front of it,
and runs the client through the proxy.

  python grpc_peer.py server
      Insecure server on 127.0.0.1:<random port>. First stdout line is exactly
      "LISTENING <port>". Exits when stdin reaches EOF. Service test.Echo:
        Unary         echo; b"fail:..." -> INVALID_ARGUMENT "bad input" with
                      trailing metadata x-why: because; b"trailers-only" ->
                      NOT_FOUND before anything is sent
        ServerStream  request b"N" -> msg-0 .. msg-(N-1)
        ClientStream  -> b"count=<n> bytes=<b>"
        Bidi          each message echoed back as b"echo:" + message
        Slow          records time_remaining() (deadline seen by the server),
                      waits up to 30 s while the call is active, notes
                      cancellation; returns b"done" if it ever finishes
        Stats         JSON: {"slow_calls": n, "time_remaining": [s, ...],
                      "cancelled": n, "last": {method: {"metadata": [[k, v]...],
                      "authority": str|null, "peer": str}}, "unary_te": bool|null}
                      (authority is read from a private grpcio field; grpc-core
                      strips te/content-type/grpc-timeout from the metadata, so
                      unary_te is normally false even when te: trailers was sent)

  python grpc_peer.py client <host:port> [--only name1,name2]
      Runs scenarios (unary server_stream client_stream bidi status
      trailers_only deadline cancel big concurrent stats), each independently, and
      prints ONE JSON object: {"<name>": {"ok": bool, "detail": str, ...}, ...}.
      "stats" is the server's raw Stats JSON plus "ok"/"detail". Exit code 0
      even if scenarios fail; non-zero only if the client itself crashes.
"""
import json
import math
import os
import random
import sys
import threading
import time
from concurrent import futures

import grpc

MAX_MSG = 16 * 1024 * 1024
OPTIONS = [("grpc.max_send_message_length", MAX_MSG),
           ("grpc.max_receive_message_length", MAX_MSG)]
CALL_TIMEOUT = 20.0
SCENARIOS = ["unary", "server_stream", "client_stream", "bidi", "status",
             "trailers_only", "deadline", "cancel", "big", "concurrent", "stats"]


# ----------------------------------------------------------------- server
LOCK = threading.Lock()
STATE = {"slow_calls": 0, "time_remaining": [], "cancelled": 0, "last": {}, "unary_te": None}


def _meta_value(v):
    return v if isinstance(v, str) else "hex:" + bytes(v).hex()


def record(method, context):
    md = [[k, _meta_value(v)] for k, v in (context.invocation_metadata() or ())]
    authority = None
    try:  # private in grpcio: the :authority the C core received
        host = context._rpc_event.call_details.host
        authority = host.decode("latin-1") if isinstance(host, bytes) else host
    except Exception:
        pass
    with LOCK:
        STATE["last"][method] = {"metadata": md, "authority": authority, "peer": context.peer()}
        if method == "Unary":
            STATE["unary_te"] = any(k == "te" for k, _ in md)


def unary(request, context):
    record("Unary", context)
    if request.startswith(b"fail:"):
        context.set_trailing_metadata((("x-why", "because"),))
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input")
    if request == b"trailers-only":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return request


def server_stream(request, context):
    record("ServerStream", context)
    for i in range(int(request.decode("ascii"))):
        yield b"msg-%d" % i


def client_stream(request_iterator, context):
    record("ClientStream", context)
    sizes = [len(msg) for msg in request_iterator]
    return b"count=%d bytes=%d" % (len(sizes), sum(sizes))


def bidi(request_iterator, context):
    record("Bidi", context)
    for msg in request_iterator:
        yield b"echo:" + msg


def slow(request, context):
    record("Slow", context)
    remaining = context.time_remaining()
    if remaining is None or not math.isfinite(remaining) or remaining > 1e6:
        remaining = None  # no deadline reached the server
    finished = [False]

    def on_done():
        if not finished[0]:
            with LOCK:
                STATE["cancelled"] += 1

    context.add_callback(on_done)
    with LOCK:
        STATE["slow_calls"] += 1
        STATE["time_remaining"].append(remaining)
    end = time.monotonic() + 30
    while context.is_active() and time.monotonic() < end:
        time.sleep(0.02)
    if context.is_active():
        finished[0] = True
        return b"done"
    return b""


def stats(request, context):
    record("Stats", context)
    with LOCK:
        return json.dumps(STATE).encode()


def run_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=128), options=OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Stats": grpc.unary_unary_rpc_method_handler(stats),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    if not port:
        sys.exit("could not bind")
    server.start()
    print("LISTENING %d" % port, flush=True)

    def watch_stdin():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            server.stop(0)
            os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    server.wait_for_termination()


# ----------------------------------------------------------------- client
def _err(e):
    return "%s %r" % (e.code(), e.details()) if isinstance(e, grpc.RpcError) else repr(e)


def _res(ok, detail=""):
    return {"ok": bool(ok), "detail": "" if ok else detail}


def _short(b):
    return repr(b[:80]) + ("... (%d bytes)" % len(b) if len(b) > 80 else "")


def sc_unary(ch):
    got = ch.unary_unary("/test.Echo/Unary")(b"hello", timeout=CALL_TIMEOUT)
    return _res(got == b"hello", "got %s" % _short(got))


def sc_server_stream(ch):
    got = list(ch.unary_stream("/test.Echo/ServerStream")(b"5", timeout=CALL_TIMEOUT))
    want = [b"msg-%d" % i for i in range(5)]
    return _res(got == want, "got %r" % got)


def sc_client_stream(ch):
    msgs = [b"a", b"bb", b"ccc", b"", b"dddd"]
    got = ch.stream_unary("/test.Echo/ClientStream")(iter(msgs), timeout=CALL_TIMEOUT)
    return _res(got == b"count=5 bytes=10", "got %s" % _short(got))


def sc_bidi(ch):
    # Lock-step: send one, wait for its echo, then send the next (proves the
    # proxy streams both directions instead of buffering).
    got, cond, sent = [], threading.Condition(), [b"one", b"two", b"three"]

    def requests():
        for i, m in enumerate(sent):
            with cond:
                if not cond.wait_for(lambda: len(got) >= i, timeout=CALL_TIMEOUT):
                    return
            yield m

    for resp in ch.stream_stream("/test.Echo/Bidi")(requests(), timeout=CALL_TIMEOUT):
        with cond:
            got.append(resp)
            cond.notify_all()
    want = [b"echo:" + m for m in sent]
    return _res(got == want, "got %r" % got)


def sc_status(ch):
    try:
        got = ch.unary_unary("/test.Echo/Unary")(b"fail:x", timeout=CALL_TIMEOUT)
        return _res(False, "no error, got %s" % _short(got))
    except grpc.RpcError as e:
        tm = [(k, _meta_value(v)) for k, v in (e.trailing_metadata() or ())]
        ok = (e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details() == "bad input"
              and ("x-why", "because") in tm)
        return _res(ok, "%s trailing=%r" % (_err(e), tm))


def sc_trailers_only(ch):
    try:
        got = ch.unary_unary("/test.Echo/Unary")(b"trailers-only", timeout=CALL_TIMEOUT)
        return _res(False, "no error, got %s" % _short(got))
    except grpc.RpcError as e:
        return _res(e.code() == grpc.StatusCode.NOT_FOUND, _err(e))


def _stats(ch):
    return json.loads(ch.unary_unary("/test.Echo/Stats")(b"", timeout=CALL_TIMEOUT))


def sc_deadline(ch):
    before = _stats(ch)
    start = time.monotonic()
    try:
        got = ch.unary_unary("/test.Echo/Slow")(b"", timeout=0.5)
        return _res(False, "no error, got %s" % _short(got))
    except grpc.RpcError as e:
        elapsed = time.monotonic() - start
        if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED or elapsed > 2.0:
            return _res(False, "%s after %.3fs" % (_err(e), elapsed))
    end, st = time.monotonic() + 10, before
    while time.monotonic() < end:
        st = _stats(ch)
        if st["cancelled"] > before["cancelled"] and st["slow_calls"] > before["slow_calls"]:
            break
        time.sleep(0.1)
    else:
        return _res(False, "server never saw the cancellation: %r" % st)
    tr = st["time_remaining"][before["slow_calls"]]
    # grpc-timeout is rounded up when encoded and the server converts between
    # clocks, so a direct call can show e.g. 0.5007 s: allow 50 ms of slack.
    r = _res(tr is not None and 0 < tr <= 0.55,
             "server time_remaining=%r (grpc-timeout not forwarded?)" % tr)
    r.update(time_remaining=tr, elapsed=round(elapsed, 3), cancelled=st["cancelled"])
    return r


def sc_cancel(ch):
    """A Slow call without a deadline, cancelled by the client once the
    server runs it: the server never sends a status (the proxy must still
    count the call, as cancelled)."""
    before = _stats(ch)
    fut = ch.unary_unary("/test.Echo/Slow").future(b"", timeout=CALL_TIMEOUT + 10)
    end = time.monotonic() + 10
    while time.monotonic() < end and _stats(ch)["slow_calls"] <= before["slow_calls"]:
        time.sleep(0.05)
    fut.cancel()
    end, st = time.monotonic() + 10, before
    while time.monotonic() < end:
        st = _stats(ch)
        if st["cancelled"] > before["cancelled"]:
            return _res(fut.cancelled(), "future not cancelled")
        time.sleep(0.05)
    return _res(False, "server never saw the cancellation: %r" % st)


def sc_big(ch):
    payload = random.Random(42).randbytes(4_000_000)
    got = ch.unary_unary("/test.Echo/Unary")(payload, timeout=CALL_TIMEOUT)
    return _res(got == payload, "got %d bytes, equal=%s" % (len(got), got == payload))


def sc_concurrent(ch):
    call = ch.unary_unary("/test.Echo/Unary")
    payloads = [(b"c-%d-" % i) * (i + 1) for i in range(50)]
    futs = [call.future(p, timeout=CALL_TIMEOUT) for p in payloads]
    bad = []
    for i, (p, f) in enumerate(zip(payloads, futs)):
        try:
            if f.result() != p:
                bad.append("%d: wrong bytes" % i)
        except grpc.RpcError as e:
            bad.append("%d: %s" % (i, _err(e)))
    return _res(not bad, "; ".join(bad[:10]) + (" (%d failed)" % len(bad)))


def sc_stats(ch):
    out = {"ok": True, "detail": ""}
    out.update(_stats(ch))
    return out


def run_client(target, only):
    results = {}
    for name in only:
        # Own channel + own subchannel pool per scenario: a broken connection
        # in one scenario cannot spill into the next.
        ch = grpc.insecure_channel(target, options=OPTIONS + [("grpc.use_local_subchannel_pool", 1)])
        try:
            results[name] = globals()["sc_" + name](ch)
        except Exception as e:  # scenario failed, not the client
            results[name] = _res(False, _err(e))
        finally:
            ch.close()
    print(json.dumps(results), flush=True)


def main(argv):
    if argv[:1] == ["server"] and len(argv) == 1:
        return run_server()
    if argv[:1] == ["client"] and len(argv) in (2, 4) and (len(argv) == 2 or argv[2] == "--only"):
        only = argv[3].split(",") if len(argv) == 4 else SCENARIOS
        unknown = [n for n in only if n not in SCENARIOS]
        if unknown:
            sys.exit("unknown scenario(s): %s (known: %s)" % (",".join(unknown), ",".join(SCENARIOS)))
        return run_client(argv[1], only)
    sys.exit("usage: grpc_peer.py server | client <host:port> [--only a,b]")


if __name__ == "__main__":
    main(sys.argv[1:])
