"""A small SQS stand-in for the listener's benchmark, in a process of its own.

``python -m bench.sqs_server`` prints its endpoint on stdout and serves
until killed. It speaks the SQS JSON protocol botocore uses (``X-Amz-Target:
AmazonSQS.<Action>``) for the calls the listener and the benchmark make:
CreateQueue, GetQueueAttributes, SendMessageBatch, ReceiveMessage (long
polling, visibility timeouts), DeleteMessageBatch and
ChangeMessageVisibilityBatch. Standard-queue semantics: at-least-once, a
received message hidden for its visibility timeout, then visible again.

Why not moto's server: its ReceiveMessage walks every message of the queue
(and deep-copies each one it returns), so with 10,000 messages queued one
receive takes about a second on this machine, and the benchmark would
measure moto. Here a receive costs a deque pop per message.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACCOUNT = "123456789012"


class _Queue:
    def __init__(self, visibility: int) -> None:
        self.visibility = visibility
        self.ready: deque[str] = deque()  # message ids, visible
        self.messages: dict[str, dict[str, Any]] = {}  # id -> {"body", "receipt", "hidden_until", "count", "sent"}
        self.condition = threading.Condition()

    def release_expired(self) -> None:
        now = time.monotonic()
        for mid, m in self.messages.items():
            if m["hidden_until"] and m["hidden_until"] <= now:
                m["hidden_until"] = 0.0
                self.ready.append(mid)


class _State:
    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = {}
        self.lock = threading.Lock()
        self.receipts = itertools.count()
        self.last_sweep = 0.0


STATE = _State()


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _queue(request: dict[str, Any]) -> _Queue:
    name = str(request.get("QueueUrl", "")).rstrip("/").rsplit("/", 1)[-1]
    queue = STATE.queues.get(name)
    if queue is None:
        raise LookupError(name)
    return queue


def create_queue(request: dict[str, Any], endpoint: str) -> dict[str, Any]:
    name = request["QueueName"]
    visibility = int(request.get("Attributes", {}).get("VisibilityTimeout", 30))
    with STATE.lock:
        STATE.queues.setdefault(name, _Queue(visibility))
    return {"QueueUrl": f"{endpoint}/{ACCOUNT}/{name}"}


def get_queue_attributes(request: dict[str, Any], endpoint: str) -> dict[str, Any]:
    q = _queue(request)
    with q.condition:
        q.release_expired()
        hidden = sum(1 for m in q.messages.values() if m["hidden_until"])
        return {"Attributes": {
            "VisibilityTimeout": str(q.visibility),
            "ApproximateNumberOfMessages": str(len(q.messages) - hidden),
            "ApproximateNumberOfMessagesNotVisible": str(hidden),
            "QueueArn": f"arn:aws:sqs:us-east-1:{ACCOUNT}:bench",
        }}


def send_message_batch(request: dict[str, Any], endpoint: str) -> dict[str, Any]:
    q = _queue(request)
    done = []
    with q.condition:
        for entry in request["Entries"]:
            mid = str(uuid.uuid4())
            q.messages[mid] = {"body": entry["MessageBody"], "receipt": "", "hidden_until": 0.0, "count": 0,
                               "sent": int(time.time() * 1000)}
            q.ready.append(mid)
            done.append({"Id": entry["Id"], "MessageId": mid, "MD5OfMessageBody": _md5(entry["MessageBody"])})
        q.condition.notify_all()
    return {"Successful": done, "Failed": []}


def receive_message(request: dict[str, Any], endpoint: str) -> dict[str, Any]:
    q = _queue(request)
    count = int(request.get("MaxNumberOfMessages", 1))
    visibility = int(request.get("VisibilityTimeout", q.visibility))
    deadline = time.monotonic() + int(request.get("WaitTimeSeconds", 0))
    out: list[dict[str, Any]] = []
    with q.condition:
        while True:
            now = time.monotonic()
            if now - STATE.last_sweep > 0.5:
                STATE.last_sweep = now
                q.release_expired()
            while q.ready and len(out) < count:
                mid = q.ready.popleft()
                m = q.messages.get(mid)
                if m is None or m["hidden_until"]:
                    continue
                m["hidden_until"] = now + visibility
                m["count"] += 1
                m["receipt"] = f"{mid}#{next(STATE.receipts)}"
                attributes = {"ApproximateReceiveCount": str(m["count"]), "SentTimestamp": str(m["sent"])}
                out.append({"MessageId": mid, "ReceiptHandle": m["receipt"], "Body": m["body"],
                            "MD5OfBody": _md5(m["body"]), "Attributes": attributes})
            if out or now >= deadline:
                break
            q.condition.wait(min(0.5, deadline - now))
    return {"Messages": out} if out else {}


def delete_message_batch(request: dict[str, Any], endpoint: str) -> dict[str, Any]:
    q = _queue(request)
    done, failed = [], []
    with q.condition:
        for entry in request["Entries"]:
            mid = entry["ReceiptHandle"].split("#", 1)[0]
            m = q.messages.get(mid)
            if m is not None and m["receipt"] == entry["ReceiptHandle"]:
                del q.messages[mid]
                done.append({"Id": entry["Id"]})
            elif m is None:
                done.append({"Id": entry["Id"]})  # already deleted: SQS says success
            else:
                failed.append({"Id": entry["Id"], "Code": "ReceiptHandleIsInvalid", "SenderFault": True,
                               "Message": "stale receipt handle"})
    return {"Successful": done, "Failed": failed}


def change_message_visibility_batch(request: dict[str, Any], endpoint: str) -> dict[str, Any]:
    q = _queue(request)
    done = []
    with q.condition:
        now = time.monotonic()
        for entry in request["Entries"]:
            mid = entry["ReceiptHandle"].split("#", 1)[0]
            m = q.messages.get(mid)
            if m is not None and m["receipt"] == entry["ReceiptHandle"]:
                timeout = int(entry.get("VisibilityTimeout", 0))
                if timeout == 0:
                    m["hidden_until"] = 0.0
                    q.ready.append(mid)
                else:
                    m["hidden_until"] = now + timeout
            done.append({"Id": entry["Id"]})
        q.condition.notify_all()
    return {"Successful": done, "Failed": []}


ACTIONS = {
    "CreateQueue": create_queue,
    "GetQueueAttributes": get_queue_attributes,
    "SendMessageBatch": send_message_batch,
    "ReceiveMessage": receive_message,
    "DeleteMessageBatch": delete_message_batch,
    "ChangeMessageVisibilityBatch": change_message_visibility_batch,
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        action = self.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
        endpoint = f"http://{self.headers.get('Host')}"
        try:
            status, answer = 200, ACTIONS[action](request, endpoint)
        except LookupError:
            status, answer = 400, {"__type": "com.amazonaws.sqs#QueueDoesNotExist",
                                   "message": "The specified queue does not exist."}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
