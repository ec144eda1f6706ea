"""A fake OpenAI-compatible chat-completions endpoint for judge tests (tests/test_rover.py,
tests/test_rover_generate.py): bound to 127.0.0.1 on a free port, bounded in requests and in time.

    with FakeServer([(200, '{"image_quality_score": 4}'), (500, None)]) as server:
      judge = OpenAIJudge(server.url, "judge-model", ...)
    server.requests            # [{"path", "auth", "body"}], one per request received

Each answer is (status, content): status 200 replies with `content` as choices[0].message.content,
any other status with an error body that echoes `SECRET` (so tests can check it is scrubbed), and
`TIMEOUT` holds the request without replying for `stall` seconds, then drops the connection (a judge
whose timeout is shorter sees a timeout). Answers come from the `script` list in order, or from
`respond(body) -> answer` when a callable is given (the reply then depends on the request, whatever
the order). Past `limit` requests, or with the script used up, every request gets HTTP 503.
Requests are handled in threads, so a stalled one does not hold up the next.
"""
import http.server
import json
import threading
import time

SECRET = "sk-test-DO-NOT-LEAK-1234567890"
TIMEOUT = "timeout"


class FakeServer:
  """See the module docstring."""

  def __init__(self, script=(), limit=20, respond=None, stall=1.0):
    self.script, self.limit, self.respond, self.stall = list(script), limit, respond, stall
    self.requests = []
    self._lock = threading.Lock()
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with outer._lock:
          outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                 "body": body})
          over = len(outer.requests) > outer.limit
          if over or (outer.respond is None and not outer.script):
            answer = (503, None)
          elif outer.respond is not None:
            answer = outer.respond(body)
          else:
            answer = outer.script.pop(0)
        if answer == TIMEOUT:
          time.sleep(outer.stall)
          self.close_connection = True
          return
        status, content = answer
        payload = {"choices": [{"message": {"content": content}}]} if status == 200 else {
            "error": {"message": f"Incorrect API key provided: {SECRET}"}}
        data = json.dumps(payload).encode()
        try:
          self.send_response(status)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(data)))
          self.end_headers()
          self.wfile.write(data)
        except OSError:          # the client gave up already
          pass

    class Server(http.server.ThreadingHTTPServer):
      daemon_threads = True

      def handle_error(self, request, client_address):
        pass                      # a client that hung up on a stalled request

    self.httpd = Server(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                   daemon=True)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.httpd.shutdown()
    self.httpd.server_close()


def prompt_text(body: dict) -> str:
  """The rubric text of a chat-completions request body (its first text part)."""
  return body["messages"][0]["content"][0]["text"]
