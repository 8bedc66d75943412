"""A consumer of a NIM endpoint: one chat completion, from inside the cluster.

What a workflow's next step does with the `endpoint` a NIMTask returned: POST
`{endpoint}/v1/chat/completions` by the Service's cluster DNS name. Python standard library only,
so it runs as `python3 -c "$(cat ask_endpoint.py)" ENDPOINT MODEL [QUESTION]` in any image with
python3; `make demo` and tests/integration/test_kubelet_lives.py run it in a pod on the real node.
It prints the server's JSON answer on one line (exit 0), or what went wrong (exit 1).

Right after the task succeeds the cluster DNS may not list the new Service for a moment (the
DNS server follows the API), so a name that does not resolve yet is retried for up to 60 s.
"""

import json
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def ask(endpoint: str, model: str, question: str) -> dict:
    host = urllib.parse.urlsplit(endpoint).hostname or ""
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.getaddrinfo(host, None)
            break
        except socket.gaierror:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 64,
    }
    request = urllib.request.Request(
        endpoint.rstrip("/") + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def main() -> int:
    if len(sys.argv) < 3:
        print("usage: ask_endpoint.py ENDPOINT MODEL [QUESTION]", file=sys.stderr)
        return 2
    endpoint, model = sys.argv[1], sys.argv[2]
    question = sys.argv[3] if len(sys.argv) > 3 else "What is Flyte?"
    try:
        answer = ask(endpoint, model, question)
    except (OSError, urllib.error.URLError, ValueError) as e:
        print(f"asking {endpoint} failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
