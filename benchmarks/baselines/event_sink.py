"""A bare CloudEvents collector for the payload-log benchmark: uvicorn (httptools, uvloop)
answering 202 to every POST after reading its body, counting them. Usage: event_sink.py PORT"""

from __future__ import annotations

import sys

import uvicorn

received = 0


async def app(scope: dict, receive, send) -> None:  # noqa: ANN001
    global received
    if scope["type"] != "http":
        return
    while True:
        message = await receive()
        if not message.get("more_body"):
            break
    if scope["method"] == "GET":  # the count, for the runner
        body = str(received).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    received += 1
    await send({"type": "http.response.start", "status": 202, "headers": []})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                loop="uvloop", http="httptools", access_log=False)
