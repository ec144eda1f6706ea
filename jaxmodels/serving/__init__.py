"""Serving a run behind an OpenAI-compatible HTTP API (serve.py is the command).

  loader.py   checkpoint dir -> model + tokenizer + config (trainer.setup.restore_eval_model)
  schema.py   request validation: OpenAI-style 400s naming the field, size limits, image decoding
  engine.py   dynamic batching: bounded queue, one worker, bucketed shapes, compiled-program count
  app.py      the HTTP endpoints (http.server), bearer key, timeouts, SSE streaming
"""
